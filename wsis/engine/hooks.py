"""Hooks: what a method adds to the shared training loop (clipping, LR schedules, logging, checkpoints).

The :class:`~wsis.engine.trainer.Trainer` runs the loop; everything around it is a hook, as in
detectron2's ``HookBase``. Every method gets the trainer as its argument (no hidden back-reference);
hooks run in the order given, except that :class:`Checkpointer` always runs last, so what it saves
already includes the other hooks' work of that step (the scheduler stepped, the loss summed)::

    before_train                       once (a Checkpointer resumes here)
    for each epoch:  before_epoch
        for each step:  before_step -> forward + backward -> after_backward -> optimizer.step -> after_step
    after_epoch                        also when an iteration schedule stops in the middle of an epoch
    after_train

What a hook may read on the trainer: ``model`` (``net`` is the DDP-wrapped one, set after
``before_train``), ``optimizer``, ``info`` (device, rank), ``workdir``, ``config``, ``seed``,
``epoch`` (0-based), ``step_in_epoch`` and ``global_step`` (steps done), ``epoch_length`` (steps of
a whole epoch), ``total_epochs``, ``max_iterations`` (None for epoch schedules), ``step_values``
(the last step's ``{"loss": ..., extras}``), ``step_lr`` (the rate(s) the last step used) and, in
``after_epoch``, ``epoch_complete`` (False when the iteration count ended the epoch early).

A hook with a ``state_key`` is stateful: :class:`Checkpointer` stores ``hook.state_dict()`` under that
key of ``last.pt`` and gives it back through ``load_state_dict`` on resume (None when the
checkpoint has no such key). The keys ``scheduler``
and ``running`` are those of the checkpoints written before hooks existed, so old workdirs resume.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn
from tqdm import tqdm

from wsis.engine import distributed as dist_utils
from wsis.engine.checkpoint import (capture_rng_state, derive_seed, load_checkpoint, restore_rng_state, save_checkpoint,
                                    seed_everything)
from wsis.errors import InputError

if TYPE_CHECKING:  # the trainer imports this module
    from wsis.engine.trainer import Trainer


class HookBase:
    """A no-op at every point of the loop; subclasses override the points they need."""

    state_key: str | None = None  # where Checkpointer stores state_dict(); None = stateless

    def before_train(self, trainer: "Trainer") -> None: ...

    def after_train(self, trainer: "Trainer") -> None: ...

    def before_epoch(self, trainer: "Trainer") -> None: ...

    def after_epoch(self, trainer: "Trainer") -> None: ...

    def before_step(self, trainer: "Trainer") -> None: ...

    def after_backward(self, trainer: "Trainer") -> None: ...

    def after_step(self, trainer: "Trainer") -> None: ...

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None: ...


class GradClip(HookBase):
    """Bound the gradient norm to ``max_norm``: of all parameters together, or with ``per_group`` of
    each optimizer parameter group on its own (so a loss spike in one part of a model does not
    shrink every other part's step)."""

    def __init__(self, max_norm: float, per_group: bool = False) -> None:
        if not max_norm > 0:
            raise ValueError(f"GradClip: max_norm must be > 0, not {max_norm}")
        self.max_norm, self.per_group = float(max_norm), per_group

    def after_backward(self, trainer: "Trainer") -> None:
        if self.per_group:
            for group in trainer.optimizer.param_groups:
                nn.utils.clip_grad_norm_(group["params"], self.max_norm)
        else:
            nn.utils.clip_grad_norm_(trainer.model.parameters(), self.max_norm)


class LRScheduler(HookBase):
    """Step a torch LR scheduler after every optimizer step (``interval="step"``) or after every whole
    epoch (``"epoch"``; an epoch an iteration schedule cuts short does not count)."""

    state_key = "scheduler"

    def __init__(self, scheduler: Any, interval: str = "epoch") -> None:
        if interval not in ("epoch", "step"):
            raise ValueError(f"LRScheduler: interval must be 'epoch' or 'step', not {interval!r}")
        self.scheduler, self.interval = scheduler, interval

    def after_step(self, trainer: "Trainer") -> None:
        if self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, trainer: "Trainer") -> None:
        if self.interval == "epoch" and trainer.epoch_complete:
            self.scheduler.step()

    def state_dict(self) -> Any:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: Any) -> None:
        if state is not None:
            self.scheduler.load_state_dict(state)


class MetricsLogger(HookBase):
    """A JSON line per epoch (and every ``log_every`` steps, 0 = never) in ``workdir/log.jsonl``; a
    tqdm bar and an epoch summary on rank 0 when ``progress``. Step lines hold the mean over the
    steps since the last one; epoch lines the mean over the epoch, averaged over processes. The
    epoch's running sums are its checkpointed state, so a resumed epoch logs the mean of all of it."""

    state_key = "running"
    LOG_NAME = "log.jsonl"

    def __init__(self, log_every: int = 50, progress: bool = True) -> None:
        self.log_every, self.progress = log_every, progress
        self._sums: dict[str, float] | None = None
        self._resumed: dict[str, float] | None = None
        self._window: dict[str, float] = {}
        self._start = 0.0
        self._bar: tqdm | None = None

    def before_epoch(self, trainer: "Trainer") -> None:
        self._sums = dict(self._resumed or {})
        self._resumed = None
        self._window = {}
        self._start = time.perf_counter() - float(self._sums.pop("_seconds", 0.0))
        self._bar = tqdm(total=trainer.steps_this_epoch() - trainer.step_in_epoch,
                         desc=f"epoch {trainer.epoch + 1}/{trainer.total_epochs}", leave=False,
                         disable=not (self.progress and dist_utils.is_main()), dynamic_ncols=True)

    def after_step(self, trainer: "Trainer") -> None:
        assert self._sums is not None and self._bar is not None
        for target in (self._sums, self._window):
            for k, v in trainer.step_values.items():
                target[k] = target.get(k, 0.0) + v
            target["_count"] = target.get("_count", 0.0) + 1
        self._bar.update(1)
        if self.log_every and trainer.global_step % self.log_every == 0:
            line = _means(self._window, trainer)
            self._bar.set_postfix(loss=f"{line['loss']:.4f}")
            self._write(trainer, {"event": "step", "epoch": trainer.epoch + 1, "step": trainer.global_step, **line,
                                  "lr": trainer.step_lr})
            self._window = {}

    def after_epoch(self, trainer: "Trainer") -> None:
        assert self._sums is not None
        if self._bar is not None:
            self._bar.close()
        means = _means(self._sums, trainer, reduce=True)
        seconds = time.perf_counter() - self._start
        line = {"event": "epoch", "epoch": trainer.epoch + 1, "step": trainer.global_step, **means,
                "lr": trainer.step_lr if trainer.step_lr is not None else trainer.current_lr(),
                "seconds": round(seconds, 3)}
        if not trainer.epoch_complete:
            line["partial"] = True  # the iteration count ended this epoch early
        self._write(trainer, line)
        if self.progress and dist_utils.is_main():
            tqdm.write(f"epoch {trainer.epoch + 1}/{trainer.total_epochs} loss {means.get('loss', float('nan')):.4f} "
                       f"({line['seconds']:.1f} s)")
        # a whole epoch is done with its sums; a cut one keeps them for a run that extends the schedule
        self._sums = None if trainer.epoch_complete else {**self._sums, "_seconds": seconds}

    def state_dict(self) -> Any:
        if self._sums is None:
            return None
        seconds = self._sums.get("_seconds", time.perf_counter() - self._start)
        return {**self._sums, "_seconds": seconds}

    def load_state_dict(self, state: Any) -> None:
        self._resumed = None if state is None else dict(state)

    def _write(self, trainer: "Trainer", line: dict[str, Any]) -> None:
        if dist_utils.is_main():
            with open(trainer.workdir / self.LOG_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")  # one write per line: a killed run leaves whole lines


def _means(sums: Mapping[str, float], trainer: "Trainer", reduce: bool = False) -> dict[str, float]:
    count = max(sums.get("_count", 0.0), 1.0)
    keys = sorted(k for k in sums if not k.startswith("_"))
    values = torch.tensor([sums[k] / count for k in keys], dtype=torch.float64)
    if reduce and keys:
        # gloo/nccl reduce on the process device; float64 keeps the log stable.
        values = dist_utils.all_reduce_mean(values.to(trainer.info.device)).cpu()
    return {k: float(v) for k, v in zip(keys, values.tolist())}


class Checkpointer(HookBase):
    """``workdir/last.pt``, written atomically after every epoch (and every ``every`` steps), and exact
    resume from it in ``before_train`` (when ``resume``): model, optimizer, the stateful hooks, the
    position in the schedule and every process's RNG states. Always runs after the other hooks."""

    CHECKPOINT_NAME = "last.pt"

    def __init__(self, every: int | None = None, resume: bool = True) -> None:
        self.every, self.resume = every, resume

    def before_train(self, trainer: "Trainer") -> None:
        path = trainer.workdir / self.CHECKPOINT_NAME
        if not (self.resume and path.is_file()):
            return
        state = load_checkpoint(path, map_location="cpu")
        check_same_settings(path, state.get("config"), trainer.config)
        try:
            trainer.model.load_state_dict(state["model"])
            trainer.optimizer.load_state_dict(state["optimizer"])
            for hook in trainer.hooks:
                if hook.state_key is not None:
                    hook.load_state_dict(state.get(hook.state_key))
            trainer.epoch, trainer.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
            trainer.global_step = int(state["step"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise InputError(path, f"checkpoint does not fit this model/optimizer: {str(e)[:300]}") from e
        _say(trainer, f"resuming from {path}: " + _resume_position(trainer))
        rngs = state.get("rng") or []
        if len(rngs) == trainer.info.world_size:
            restore_rng_state(rngs[trainer.info.rank])
        else:  # a different number of processes: the data split changes anyway, so resume is not exact
            seed_everything(derive_seed(trainer.seed, trainer.info.rank, trainer.epoch))

    def after_step(self, trainer: "Trainer") -> None:
        # the step that ends the epoch or the schedule is saved by after_epoch
        if (self.every and trainer.global_step % self.every == 0
                and trainer.step_in_epoch < trainer.steps_this_epoch()):
            self.save(trainer, trainer.epoch, trainer.step_in_epoch)

    def after_epoch(self, trainer: "Trainer") -> None:
        if trainer.epoch_complete:
            self.save(trainer, trainer.epoch + 1, 0)
        else:
            self.save(trainer, trainer.epoch, trainer.step_in_epoch)

    def save(self, trainer: "Trainer", epoch: int, step_in_epoch: int) -> None:
        """Checkpoint after ``epoch`` whole epochs and ``step_in_epoch`` steps of the next (rank 0 writes)."""
        rngs = dist_utils.all_gather_object(capture_rng_state())
        if dist_utils.is_main():
            state = {
                "model": trainer.model.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "scheduler": None,
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "step": trainer.global_step,
                "rng": rngs,
                "running": None,
                "config": trainer.config,
                "seed": trainer.seed,
                "world_size": trainer.info.world_size,
            }
            for hook in trainer.hooks:
                if hook.state_key is not None:
                    state[hook.state_key] = hook.state_dict()
            save_checkpoint(trainer.workdir / self.CHECKPOINT_NAME, state)
        dist_utils.barrier()


class RunAnnouncer(HookBase):
    """The start line of a run (samples, batch, steps) and, once, after its first steps, the time
    per step and the time left at that rate: a user sees at once what a run will cost."""

    def __init__(self, after_steps: int = 3) -> None:
        self.after_steps = after_steps
        self._steps, self._started, self._done, self._total = 0, 0.0, False, 0

    def before_train(self, trainer: "Trainer") -> None:
        self._steps, self._started, self._done = 0, time.perf_counter(), False

    def before_epoch(self, trainer: "Trainer") -> None:
        if self._total:  # announced already
            return
        per_epoch = trainer.epoch_length
        self._total = (trainer.max_iterations if trainer.max_iterations is not None
                       else per_epoch * trainer.total_epochs)
        info = trainer.info
        batch = f"batch {trainer.batch_size}" + (f" x {info.world_size} processes" if info.world_size > 1 else "")
        samples = trainer.num_samples if trainer.num_samples is not None else "?"
        _say(trainer, f"training on {info.device.type}: {samples} samples, {batch}, {per_epoch} steps per epoch x "
                      f"{trainer.total_epochs} epochs = {self._total} steps")

    def after_step(self, trainer: "Trainer") -> None:
        self._steps += 1
        if self._done or self._steps < min(self.after_steps, max(self._total, 1)):
            return
        self._done = True
        per_step = (time.perf_counter() - self._started) / self._steps
        left = max(self._total - trainer.global_step, 0)
        _say(trainer, f"{per_step:.2f} s per step over the first {self._steps}: about {_duration(per_step * left)} "
                      f"for the {left} steps left")


# Settings that do not change what a run computes, or that only say how far it goes (a schedule may
# be extended): they may differ between a run and its resumption.
RESUME_FREE_KEYS = ("num_workers", "device", "epochs", "iterations", "steps")


def changed_settings(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every dotted key whose value differs (keys only on one side included),
    except those ending in one of :data:`RESUME_FREE_KEYS`."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            out += changed_settings(saved.get(key, "(unset)"), current.get(key, "(unset)"), f"{prefix}{key}.")
        return out
    key = prefix.rstrip(".")
    if saved == current or key.split(".")[-1] in RESUME_FREE_KEYS:
        return []
    return [f"{key}: {_short(saved)} -> {_short(current)}"]


def check_same_settings(path: Any, saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    """A checkpoint continues only the run that wrote it: any setting that changes the result must be
    the same, else the error names what changed. Checkpoints written before settings were stored
    (``saved`` None) have nothing to compare."""
    if saved is None:
        return
    changed = changed_settings(saved, current)
    saved_cfg, current_cfg = saved.get("config"), current.get("config")
    if changed and isinstance(saved_cfg, Mapping) and isinstance(current_cfg, Mapping) \
            and set(saved_cfg) != set(current_cfg):
        # another set of sections: a run of an earlier config layout (issue 16), not a changed value
        raise InputError(path, "this run was started with an earlier config layout (sections "
                               f"{', '.join(sorted(map(str, saved_cfg)))}), which this version does not resume; "
                               "finish it with the version that started it, or start over (wsis train --restart)")
    if changed:
        shown = "; ".join(changed[:6]) + ("; ..." if len(changed) > 6 else "")
        raise InputError(path, f"this run was started with other settings ({shown}); resume with "
                               "the same ones, or start over (wsis train --restart)")


def _resume_position(trainer: "Trainer") -> str:
    if trainer.max_iterations is not None:
        if trainer.global_step >= trainer.max_iterations:
            return f"all {trainer.max_iterations} iterations were done already"
        return f"{trainer.global_step} of {trainer.max_iterations} iterations done"
    if trainer.epoch >= trainer.total_epochs:
        return f"all {trainer.total_epochs} epochs were done already"
    return (f"{trainer.epoch} of {trainer.total_epochs} epochs and {trainer.step_in_epoch} steps of the next done "
            f"(step {trainer.global_step})")


def _say(trainer: "Trainer", text: str) -> None:
    if getattr(trainer, "progress", True) and dist_utils.is_main():
        tqdm.write(text)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."
