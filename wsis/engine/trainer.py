"""The training loop every trainer of the toolkit shares.

A method supplies a model, an optimizer and a *step function* ``step_fn(model, batch) -> loss`` (or
``(loss, {name: value})`` for extra logged values); :class:`Trainer` does the rest:

* seeding, and deterministic algorithms on CPU;
* a data order that is a function of ``(seed, epoch)`` only (:class:`EpochSampler`, also used to
  seed the DataLoader's workers), which is what makes resuming exact;
* DistributedDataParallel with the data split across ranks when started by ``torchrun``;
* a tqdm bar on rank 0, a JSON line per epoch (and every ``log_every`` steps) in ``workdir/log.jsonl``;
* ``workdir/last.pt`` written atomically at the end of every epoch (and every ``checkpoint_every``
  steps), and exact resume from it: on CPU, an interrupted-and-resumed run ends with the same
  parameters, bit for bit, as an uninterrupted one.
"""
from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from wsis.engine import distributed as dist_utils
from wsis.engine.checkpoint import (capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint,
                                    seed_everything)
from wsis.errors import InputError

StepOutput = torch.Tensor | tuple[torch.Tensor, Mapping[str, Any]]
StepFn = Callable[[nn.Module, Any], StepOutput]
LossFn = Callable[[Any, Any], torch.Tensor]

CHECKPOINT_NAME = "last.pt"
LOG_NAME = "log.jsonl"


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (``(seed, epoch)`` and ``(seed, epoch, 1)`` give unrelated streams)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class EpochSampler(Sampler[int]):
    """Dataset indices for one epoch and one rank, as a function of ``(seed, epoch)`` only.

    Like ``DistributedSampler``: one permutation per epoch, padded by repetition to a multiple of
    ``num_replicas``, rank r taking every r-th index. ``set_start(k)`` skips this rank's first k
    samples, so a run resumed mid-epoch sees exactly the samples the interrupted run had not.
    """

    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        self.start = start

    def _per_rank(self) -> int:
        return -(-self.size // self.num_replicas)

    def epoch_indices(self) -> list[int]:
        """All indices this rank sees in the current epoch (ignoring ``start``)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self._per_rank() * self.num_replicas
        order += order[: total - len(order)] if order else []
        return order[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start:])

    def __len__(self) -> int:
        return max(self._per_rank() - self.start, 0)


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor inside (tuples, lists, dicts) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; python/numpy must follow it explicitly.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    before, before_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        if enabled:
            torch.use_deterministic_algorithms(before, warn_only=before_warn)


class Trainer:
    """Generic epoch loop: ``Trainer(model, optimizer, step_fn=..., workdir=..., epochs=...).fit(dataset)``.

    ``step_fn(model, batch)`` gets the (possibly DDP-wrapped) model and a batch already on the
    device, and returns the scalar loss, or ``(loss, {name: value})``; it must call ``model(...)``
    (not a submodule) so DDP synchronises gradients. Instead of ``step_fn``, ``loss_fn(outputs,
    targets)`` may be given for batches of ``(inputs, targets)``. ``config`` (a plain dict) is stored
    in checkpoints. ``scheduler_interval`` is ``"epoch"`` or ``"step"``. ``batch_size``,
    ``num_workers``, ``collate_fn``, ``shuffle`` and ``drop_last`` apply when ``fit`` is given a
    Dataset (per process under torchrun); a DataLoader is used as given. ``grad_clip`` bounds the
    gradient norm of all parameters together, or with ``grad_clip_per_group`` that of each optimizer
    parameter group on its own (so a loss spike in one part of a model does not shrink every other
    part's step).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, step_fn: StepFn | None = None,
                 loss_fn: LossFn | None = None, scheduler: Any = None, workdir: str | Path, epochs: int,
                 device: str | torch.device = "auto", seed: int = 0, log_every: int = 50,
                 grad_clip: float | None = None, grad_clip_per_group: bool = False,
                 batch_size: int = 16, num_workers: int = 0,
                 collate_fn: Callable | None = None, shuffle: bool = True, drop_last: bool = False,
                 checkpoint_every: int | None = None, scheduler_interval: str = "epoch",
                 config: Mapping[str, Any] | None = None, progress: bool = True, resume: bool = True,
                 find_unused_parameters: bool = False) -> None:
        if (step_fn is None) == (loss_fn is None):
            raise ValueError("Trainer: give exactly one of step_fn and loss_fn")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"Trainer: scheduler_interval must be 'epoch' or 'step', not {scheduler_interval!r}")
        if epochs < 0 or batch_size < 1:
            raise ValueError(f"Trainer: epochs={epochs}, batch_size={batch_size}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.step_fn = step_fn if step_fn is not None else _loss_step(loss_fn)
        self.workdir = Path(workdir)
        self.epochs, self.device_name, self.seed = epochs, device, seed
        self.log_every, self.grad_clip, self.grad_clip_per_group = log_every, grad_clip, grad_clip_per_group
        self.batch_size, self.num_workers, self.collate_fn = batch_size, num_workers, collate_fn
        self.shuffle, self.drop_last = shuffle, drop_last
        self.checkpoint_every, self.scheduler_interval = checkpoint_every, scheduler_interval
        # weights_only loading accepts only plain types: Paths and the like are stored as strings.
        self.config = json.loads(json.dumps(dict(config or {}), default=str))
        self.progress, self.resume = progress, resume
        self.find_unused_parameters = find_unused_parameters
        self.global_step = 0
        self._step_lr: float | list[float] | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.workdir / CHECKPOINT_NAME

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_NAME

    # ------------------------------------------------------------------ public

    def fit(self, data: Dataset | DataLoader) -> nn.Module:
        """Train until ``epochs`` epochs are done (resuming from ``workdir/last.pt`` if present); returns the model."""
        info = dist_utils.init_distributed(self.device_name)
        self.info = info
        self.model.to(info.device)
        if dist_utils.is_main():
            self.workdir.mkdir(parents=True, exist_ok=True)
        start_epoch, skip, running = self._start(info)
        net: nn.Module = self.model
        if info.is_distributed:
            ids = [info.device.index] if info.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                      find_unused_parameters=self.find_unused_parameters)
        loader = data if isinstance(data, DataLoader) else self._make_loader(data, info)
        self._announce(loader, info, start_epoch)
        with _deterministic(info.device.type == "cpu"):
            for epoch in range(start_epoch, self.epochs):
                self._run_epoch(net, loader, epoch, skip if epoch == start_epoch else 0,
                                running if epoch == start_epoch else None)
        dist_utils.barrier()
        return self.model

    # ------------------------------------------------------------------ set-up

    def _start(self, info: dist_utils.DistInfo) -> tuple[int, int, dict[str, float] | None]:
        """Resume from the checkpoint if any: returns (epoch, steps already done in it, loss sums so far)."""
        if not (self.resume and self.checkpoint_path.is_file()):
            seed_everything(derive_seed(self.seed, info.rank))
            return 0, 0, None
        state = load_checkpoint(self.checkpoint_path, map_location="cpu")
        self._check_same_settings(state.get("config"))
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            epoch, skip, self.global_step = int(state["epoch"]), int(state["step_in_epoch"]), int(state["step"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise InputError(self.checkpoint_path, f"checkpoint does not fit this model/optimizer: {str(e)[:300]}") from e
        self._say(f"resuming from {self.checkpoint_path}: " + (
            f"all {self.epochs} epochs were done already" if epoch >= self.epochs else
            f"{epoch} of {self.epochs} epochs and {skip} steps of the next done (step {self.global_step})"))
        rngs = state.get("rng") or []
        if len(rngs) == info.world_size:
            restore_rng_state(rngs[info.rank])
        else:  # a different number of processes: the data split changes anyway, so resume is not exact
            seed_everything(derive_seed(self.seed, info.rank, epoch))
        return epoch, skip, state.get("running")

    def _check_same_settings(self, saved: Mapping[str, Any] | None) -> None:
        """A checkpoint continues only the run that wrote it: any setting that changes the result
        (all but :data:`RESUME_FREE_KEYS`) must be the same, else the error names what changed."""
        if saved is None:  # a checkpoint of before settings were stored: nothing to compare
            return
        changed = changed_settings(saved, self.config)
        if changed:
            shown = "; ".join(changed[:6]) + ("; ..." if len(changed) > 6 else "")
            raise InputError(self.checkpoint_path, f"this run was started with other settings ({shown}); resume with "
                                                   "the same ones, or start over (wsis train --restart)")
        length = changed_settings(saved, self.config, only=SCHEDULE_LENGTH_KEYS)
        if length:
            self._say(f"continuing {self.checkpoint_path} to another schedule length ({'; '.join(length)})")

    def _announce(self, loader: DataLoader, info: dist_utils.DistInfo, start_epoch: int) -> None:
        """The start line: samples, batch, steps; the time estimate follows after a few steps."""
        per_epoch = len(loader)
        self._total_steps = per_epoch * self.epochs
        self._run_steps, self._run_started, self._estimated = 0, time.perf_counter(), False
        if start_epoch >= self.epochs:
            return
        batch = f"batch {loader.batch_size}" + (f" x {info.world_size} processes" if info.world_size > 1 else "")
        samples = len(loader.dataset) if hasattr(loader.dataset, "__len__") else "?"
        self._say(f"training on {info.device.type}: {samples} samples, {batch}, {per_epoch} steps per epoch x "
                  f"{self.epochs} epochs = {self._total_steps} steps")

    def _estimate(self, after_steps: int = 3) -> None:
        """Once, after the first steps of this run: seconds per step and the time left at that rate."""
        self._run_steps += 1
        if self._estimated or self._run_steps < min(after_steps, self._total_steps):
            return
        self._estimated = True
        per_step = (time.perf_counter() - self._run_started) / self._run_steps
        left = max(self._total_steps - self.global_step, 0)
        self._say(f"{per_step:.2f} s per step over the first {self._run_steps}: about {_duration(per_step * left)} "
                  f"for the {left} steps left")

    def _say(self, text: str) -> None:
        if self.progress and dist_utils.is_main():
            tqdm.write(text)

    def _make_loader(self, dataset: Dataset, info: dist_utils.DistInfo) -> DataLoader:
        sampler = EpochSampler(len(dataset), seed=self.seed, shuffle=self.shuffle,
                               num_replicas=info.world_size, rank=info.rank)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=self.collate_fn, drop_last=self.drop_last, worker_init_fn=_seed_worker,
                          generator=torch.Generator(), pin_memory=info.device.type == "cuda",
                          persistent_workers=False)

    def _prepare_epoch(self, loader: DataLoader, epoch: int, skip: int) -> Iterator[Any]:
        """Make the epoch's data a function of (seed, epoch) and skip the batches already trained on."""
        sampler = loader.sampler
        for target in (sampler, getattr(loader, "batch_sampler", None), loader.dataset):
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch)
        if loader.generator is not None:
            loader.generator.manual_seed(derive_seed(self.seed, epoch, 1))
        if isinstance(sampler, EpochSampler):
            sampler.set_start(skip * (loader.batch_size or self.batch_size))
            return iter(loader)
        batches = iter(loader)
        for _ in range(skip):  # a foreign loader: replay its deterministic order up to where we stopped
            next(batches)
        return batches

    # ------------------------------------------------------------------ loop

    def _run_epoch(self, net: nn.Module, loader: DataLoader, epoch: int, skip: int,
                   running: Mapping[str, float] | None) -> None:
        net.train()
        batches = self._prepare_epoch(loader, epoch, skip)
        n_batches = len(loader) if isinstance(loader.sampler, EpochSampler) else max(len(loader) - skip, 0)
        sums: dict[str, float] = dict(running or {})
        window: dict[str, float] = {}
        step_in_epoch = skip
        start = time.perf_counter() - float(sums.pop("_seconds", 0.0))
        bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False,
                   disable=not (self.progress and dist_utils.is_main()), dynamic_ncols=True)
        for batch in bar:
            values = self._train_step(net, batch)
            step_in_epoch += 1
            self.global_step += 1
            self._estimate()
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
                window[k] = window.get(k, 0.0) + v
            sums["_count"] = sums.get("_count", 0.0) + 1
            window["_count"] = window.get("_count", 0.0) + 1
            if self.log_every and self.global_step % self.log_every == 0:
                line = self._means(window)
                bar.set_postfix(loss=f"{line['loss']:.4f}")
                self._log({"event": "step", "epoch": epoch + 1, "step": self.global_step, **line, "lr": self._step_lr})
                window = {}
            if (self.checkpoint_every and self.global_step % self.checkpoint_every == 0
                    and step_in_epoch < skip + n_batches):
                self._save(epoch, step_in_epoch, {**sums, "_seconds": time.perf_counter() - start})
        bar.close()
        lr = self._step_lr if self._step_lr is not None else self._lr()  # the rate the last step used
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()
        means = self._means(sums, reduce=True)
        line = {"event": "epoch", "epoch": epoch + 1, "step": self.global_step, **means, "lr": lr,
                "seconds": round(time.perf_counter() - start, 3)}
        self._log(line)
        if self.progress and dist_utils.is_main():
            tqdm.write(f"epoch {epoch + 1}/{self.epochs} loss {means.get('loss', float('nan')):.4f} "
                       f"({line['seconds']:.1f} s)")
        self._save(epoch + 1, 0, None)

    def _train_step(self, net: nn.Module, batch: Any) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.step_fn(net, move_to(batch, self.info.device))
        loss, extra = (out, {}) if isinstance(out, torch.Tensor) else out
        if loss.dim() != 0:
            raise ValueError(f"step function returned a loss of shape {tuple(loss.shape)}, expected a scalar")
        value = float(loss.detach())
        if not np.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {self.global_step + 1}")
        loss.backward()
        if self.grad_clip is not None:
            if self.grad_clip_per_group:
                for group in self.optimizer.param_groups:
                    nn.utils.clip_grad_norm_(group["params"], self.grad_clip)
            else:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self._step_lr = self._lr()
        self.optimizer.step()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        return {"loss": value, **{k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in extra.items()}}

    # ------------------------------------------------------------------ outputs

    def _means(self, sums: Mapping[str, float], reduce: bool = False) -> dict[str, float]:
        count = max(sums.get("_count", 0.0), 1.0)
        keys = sorted(k for k in sums if not k.startswith("_"))
        values = torch.tensor([sums[k] / count for k in keys], dtype=torch.float64)
        if reduce and keys:
            # gloo/nccl reduce on the process device; float64 keeps the log stable.
            values = dist_utils.all_reduce_mean(values.to(self.info.device)).cpu()
        return {k: float(v) for k, v in zip(keys, values.tolist())}

    def _lr(self) -> float | list[float]:
        lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        return lrs[0] if len(lrs) == 1 else lrs

    def _log(self, line: dict[str, Any]) -> None:
        if dist_utils.is_main():
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")  # one write per line: a killed run leaves whole lines

    def _save(self, epoch: int, step_in_epoch: int, running: Mapping[str, float] | None) -> None:
        """Checkpoint after ``epoch`` whole epochs and ``step_in_epoch`` steps of the next (rank 0 writes)."""
        rngs = dist_utils.all_gather_object(capture_rng_state())
        if dist_utils.is_main():
            save_checkpoint(self.checkpoint_path, {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "step": self.global_step,
                "rng": rngs,
                "running": None if running is None else dict(running),
                "config": self.config,
                "seed": self.seed,
                "world_size": self.info.world_size,
            })
        dist_utils.barrier()


# Settings that do not change what a run computes: they may differ between a run and its resumption.
RESUME_FREE_KEYS = ("num_workers", "device")
# The schedule's length: a run stopped (or finished) at one length and continued to another is the
# run of that other length, because learning-rate schedules are stated in absolute epochs/iterations
# (exact resume; tests/test_pdsl.py and test_engine.py resume across a longer schedule). Reported.
SCHEDULE_LENGTH_KEYS = ("epochs", "iterations", "steps")


def changed_settings(saved: Any, current: Any, prefix: str = "", *, only: tuple[str, ...] | None = None) -> list[str]:
    """``"key: old -> new"`` for every dotted key whose value differs (keys only on one side included),
    except those ending in one of :data:`RESUME_FREE_KEYS` or :data:`SCHEDULE_LENGTH_KEYS`; with
    ``only``, just the keys ending in one of those."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            out += changed_settings(saved.get(key, "(unset)"), current.get(key, "(unset)"), f"{prefix}{key}.", only=only)
        return out
    key = prefix.rstrip(".")
    last = key.split(".")[-1]
    skipped = last not in only if only is not None else last in RESUME_FREE_KEYS + SCHEDULE_LENGTH_KEYS
    if saved == current or skipped:
        return []
    return [f"{key}: {_short(saved)} -> {_short(current)}"]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _loss_step(loss_fn: LossFn) -> StepFn:
    def step(model: nn.Module, batch: Sequence[Any]) -> torch.Tensor:
        inputs, targets = batch
        return loss_fn(model(inputs), targets)
    return step
