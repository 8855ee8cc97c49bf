"""The training loop every trainer of the toolkit shares.

A method supplies a model, an optimizer and a *step function* ``step_fn(model, batch) -> loss`` (or
``(loss, {name: value})`` for extra logged values); :class:`Trainer` does the rest:

* seeding, and deterministic algorithms on CPU;
* a data order that is a function of ``(seed, epoch)`` only (:class:`EpochSampler`, also used to
  seed the DataLoader's workers), which is what makes resuming exact;
* DistributedDataParallel with the data split across ranks when started by ``torchrun``;
* a schedule of whole epochs or of an exact number of iterations;
* the hooks of :mod:`wsis.engine.hooks` at fixed points of the loop: gradient clipping, LR schedules,
  the JSON log and tqdm bar (:class:`~wsis.engine.hooks.MetricsLogger`) and ``workdir/last.pt``
  (:class:`~wsis.engine.hooks.Checkpointer`), written atomically and resumed from exactly: on CPU, an
  interrupted-and-resumed run ends with the same parameters, bit for bit, as an uninterrupted one.
"""
from __future__ import annotations

import json
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from wsis.engine import distributed as dist_utils
from wsis.engine.checkpoint import derive_seed, seed_everything
from wsis.engine.hooks import Checkpointer, GradClip, HookBase, LRScheduler, MetricsLogger, RunAnnouncer
from wsis.engine.hooks import RESUME_FREE_KEYS, changed_settings  # noqa: F401 (the resume check, re-exported)

StepOutput = torch.Tensor | tuple[torch.Tensor, Mapping[str, Any]]
StepFn = Callable[[nn.Module, Any], StepOutput]
LossFn = Callable[[Any, Any], torch.Tensor]

CHECKPOINT_NAME = Checkpointer.CHECKPOINT_NAME
LOG_NAME = MetricsLogger.LOG_NAME
__all__ = ["EpochSampler", "Trainer", "derive_seed", "move_to", "unwrap_model"]


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
    """The shared loop: ``Trainer(model, optimizer, step_fn=..., workdir=..., iterations=N | epochs=E,
    hooks=[...]).fit(dataset)``.

    ``step_fn(model, batch)`` gets the (possibly DDP-wrapped) model and a batch already on the
    device, and returns the scalar loss, or ``(loss, {name: value})``; it must call ``model(...)``
    (not a submodule) so DDP synchronises gradients. Instead of ``step_fn``, ``loss_fn(outputs,
    targets)`` may be given for batches of ``(inputs, targets)``. ``config`` (a plain dict) is stored
    in checkpoints. ``batch_size``, ``num_workers``, ``collate_fn``, ``shuffle`` and ``drop_last``
    apply when ``fit`` is given a Dataset (per process under torchrun); a DataLoader is used as given.

    The schedule is ``epochs`` whole epochs or exactly ``iterations`` optimizer steps (give one): an
    iteration count that is not a multiple of the epoch length ends inside the last epoch, which
    resumes (or extends, with a larger count) exactly like any other mid-epoch checkpoint.

    Everything else is a hook (:mod:`wsis.engine.hooks`) in ``hooks``. A :class:`MetricsLogger` and a
    :class:`Checkpointer` are added unless ``hooks`` holds one (whose settings then replace
    ``log_every``/``progress`` or ``checkpoint_every``/``resume``). The other keyword arguments are
    kept for the callers written before hooks and build the equivalent hooks, ahead of ``hooks``:

    * ``grad_clip``, ``grad_clip_per_group`` -> ``GradClip(grad_clip, per_group=grad_clip_per_group)``;
    * ``scheduler``, ``scheduler_interval`` -> ``LRScheduler(scheduler, interval=scheduler_interval)``;
    * ``log_every``, ``progress`` -> ``MetricsLogger(log_every, progress)``;
    * ``checkpoint_every``, ``resume`` -> ``Checkpointer(checkpoint_every, resume)``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, step_fn: StepFn | None = None,
                 loss_fn: LossFn | None = None, scheduler: Any = None, workdir: str | Path,
                 epochs: int | None = None, iterations: int | None = None, hooks: Sequence[HookBase] = (),
                 device: str | torch.device = "auto", seed: int = 0, log_every: int = 50,
                 grad_clip: float | None = None, grad_clip_per_group: bool = False,
                 batch_size: int = 16, num_workers: int = 0,
                 collate_fn: Callable | None = None, shuffle: bool = True, drop_last: bool = False,
                 checkpoint_every: int | None = None, scheduler_interval: str = "epoch",
                 config: Mapping[str, Any] | None = None, progress: bool = True, resume: bool = True,
                 find_unused_parameters: bool = False) -> None:
        if (step_fn is None) == (loss_fn is None):
            raise ValueError("Trainer: give exactly one of step_fn and loss_fn")
        if (epochs is None) == (iterations is None):
            raise ValueError("Trainer: give exactly one of epochs and iterations")
        if (epochs is not None and epochs < 0) or (iterations is not None and iterations < 0) or batch_size < 1:
            raise ValueError(f"Trainer: epochs={epochs}, iterations={iterations}, batch_size={batch_size}")
        self.model, self.optimizer = model, optimizer
        self.step_fn = step_fn if step_fn is not None else _loss_step(loss_fn)
        self.workdir = Path(workdir)
        self.epochs, self.max_iterations = epochs, iterations
        self.device_name, self.seed = device, seed
        self.batch_size, self.num_workers, self.collate_fn = batch_size, num_workers, collate_fn
        self.shuffle, self.drop_last = shuffle, drop_last
        # weights_only loading accepts only plain types: Paths and the like are stored as strings.
        self.config = json.loads(json.dumps(dict(config or {}), default=str))
        self.find_unused_parameters = find_unused_parameters
        compat: list[HookBase] = []
        if grad_clip is not None:
            compat.append(GradClip(grad_clip, per_group=grad_clip_per_group))
        if scheduler is not None:
            compat.append(LRScheduler(scheduler, interval=scheduler_interval))
        elif scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"Trainer: scheduler_interval must be 'epoch' or 'step', not {scheduler_interval!r}")
        self.hooks: list[HookBase] = [*compat, *hooks]
        if not any(isinstance(h, MetricsLogger) for h in self.hooks):
            self.hooks.append(MetricsLogger(log_every, progress))
        if progress and not any(isinstance(h, RunAnnouncer) for h in self.hooks):
            self.hooks.append(RunAnnouncer())
        self.progress = progress
        self.num_samples: int | None = None
        if not any(isinstance(h, Checkpointer) for h in self.hooks):
            self.hooks.append(Checkpointer(checkpoint_every, resume))
        # the loop's position, read by hooks
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.epoch_length = 0
        self.total_epochs = epochs or 0
        self.epoch_complete = False
        self.step_values: dict[str, float] = {}
        self.step_lr: float | list[float] | None = None
        self.net: nn.Module = model

    @property
    def checkpoint_path(self) -> Path:
        return self.workdir / Checkpointer.CHECKPOINT_NAME

    @property
    def log_path(self) -> Path:
        return self.workdir / MetricsLogger.LOG_NAME

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        """Add hooks after those given to the constructor (a Checkpointer still runs last)."""
        self.hooks.extend(hooks)

    def steps_this_epoch(self) -> int:
        """The steps the current epoch runs in all: a whole epoch, or fewer where the iteration count ends it."""
        if self.max_iterations is None:
            return self.epoch_length
        return min(self.epoch_length, self.step_in_epoch + self.max_iterations - self.global_step)

    def current_lr(self) -> float | list[float]:
        lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        return lrs[0] if len(lrs) == 1 else lrs

    # ------------------------------------------------------------------ public

    def fit(self, data: Dataset | DataLoader) -> nn.Module:
        """Train to the end of the schedule (resuming from ``workdir/last.pt`` if present); returns the model."""
        info = dist_utils.init_distributed(self.device_name)
        self.info = info
        self.model.to(info.device)
        if dist_utils.is_main():
            self.workdir.mkdir(parents=True, exist_ok=True)
        # the Checkpointer must see the other hooks' work of a step: it runs last (stable order otherwise)
        self.hooks.sort(key=lambda h: isinstance(h, Checkpointer))
        self.epoch = self.step_in_epoch = self.global_step = 0
        seed_everything(derive_seed(self.seed, info.rank))  # a resuming Checkpointer restores the saved RNGs
        with _deterministic(info.device.type == "cpu"):
            self._call("before_train")
            self.net = self.model
            if info.is_distributed:
                ids = [info.device.index] if info.device.type == "cuda" else None
                self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                               find_unused_parameters=self.find_unused_parameters)
            loader = data if isinstance(data, DataLoader) else self._make_loader(data, info)
            self.num_samples = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
            self.epoch_length = len(loader)
            if self.max_iterations is not None:
                if self.epoch_length == 0 and self.max_iterations > self.global_step:
                    raise ValueError("Trainer: an iteration schedule needs at least one batch per epoch")
                self.total_epochs = -(-self.max_iterations // max(self.epoch_length, 1))
            while not self._schedule_done():
                self._run_epoch(loader)
            self._call("after_train")
        dist_utils.barrier()
        return self.model

    # ------------------------------------------------------------------ set-up

    def _schedule_done(self) -> bool:
        if self.max_iterations is not None:
            return self.global_step >= self.max_iterations
        return self.epoch >= (self.epochs or 0)

    def _call(self, point: str) -> None:
        for hook in self.hooks:
            getattr(hook, point)(self)

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

    def _run_epoch(self, loader: DataLoader) -> None:
        self.net.train()
        batches = self._prepare_epoch(loader, self.epoch, self.step_in_epoch)
        self.epoch_complete = False
        self._call("before_epoch")
        end, exhausted = self.steps_this_epoch(), False
        while self.step_in_epoch < end:
            try:
                batch = next(batches)
            except StopIteration:  # a foreign loader shorter than its len()
                exhausted = True
                break
            self._call("before_step")
            self.step_values = self._train_step(batch)
            self.step_in_epoch += 1
            self.global_step += 1
            self._call("after_step")
        self.epoch_complete = exhausted or self.step_in_epoch >= self.epoch_length
        self._call("after_epoch")
        if self.epoch_complete:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0

    def _train_step(self, batch: Any) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.step_fn(self.net, move_to(batch, self.info.device))
        loss, extra = (out, {}) if isinstance(out, torch.Tensor) else out
        if loss.dim() != 0:
            raise ValueError(f"step function returned a loss of shape {tuple(loss.shape)}, expected a scalar")
        value = float(loss.detach())
        if not np.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {self.global_step + 1}")
        loss.backward()
        self._call("after_backward")
        self.step_lr = self.current_lr()
        self.optimizer.step()
        return {"loss": value, **{k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in extra.items()}}


def _loss_step(loss_fn: LossFn) -> StepFn:
    def step(model: nn.Module, batch: Sequence[Any]) -> torch.Tensor:
        inputs, targets = batch
        return loss_fn(model(inputs), targets)
    return step
