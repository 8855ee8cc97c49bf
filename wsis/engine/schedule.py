"""The one schedule config every method trains by: its length in iterations *or* epochs (exactly one
is set, so a schedule's length is stated once), SGD settings, linear warm-up and x0.1 steps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from wsis.engine.hooks import Checkpointer, GradClip, HookBase, LRScheduler, MetricsLogger
from wsis.errors import InputError


@dataclass
class ScheduleConfig:
    # The length: ``iterations`` optimiser steps (the detectors' papers) or ``epochs`` passes over the
    # data (PRM's); the other one is null. ``lr_steps`` and ``warmup_iterations`` count iterations either way.
    iterations: int | None = 50000
    epochs: int | None = None
    batch_size: int = 1
    lr: float = 0.00125
    momentum: float = 0.9
    weight_decay: float = 0.0001
    warmup_iterations: int = 0
    lr_steps: list[int] = field(default_factory=list)  # iterations after which lr is multiplied by 0.1
    grad_clip: float | None = None
    log_every: int = 20
    checkpoint_every: int | None = 500


def schedule_length(schedule: ScheduleConfig, where: str = "schedule") -> dict[str, int]:
    """``{"iterations": n}`` or ``{"epochs": n}`` for the Trainer; an error naming ``where`` unless
    exactly one of the two is set, and set to a number >= 0."""
    iterations, epochs = schedule.iterations, schedule.epochs
    if (iterations is None) == (epochs is None):
        state = f"iterations={iterations}, epochs={epochs}"
        fix = (f"set one of them to null ({where}.epochs=null or {where}.iterations=null)" if iterations is not None
               else f"set {where}.iterations or {where}.epochs")
        raise InputError("config", f"{where}: give the length once, in iterations or in epochs ({state}); {fix}")
    n = iterations if iterations is not None else epochs
    if n < 0 or schedule.batch_size < 1:
        raise InputError("config", f"{where}: the length must be >= 0 and batch_size >= 1 "
                                   f"(got {n}, batch_size {schedule.batch_size})")
    return {"iterations": iterations} if iterations is not None else {"epochs": epochs}


def total_iterations(schedule: ScheduleConfig, steps_per_epoch: int, where: str = "schedule") -> int:
    """The number of optimiser steps the schedule runs with ``steps_per_epoch`` batches per epoch."""
    length = schedule_length(schedule, where)
    return length["iterations"] if "iterations" in length else length["epochs"] * steps_per_epoch


def lr_factor(step: int, warmup: int, steps: Sequence[int]) -> float:
    """Learning-rate multiplier at iteration ``step`` (0-based): linear warm-up from 1/warmup, then
    0.1 per milestone passed."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return warm * 0.1 ** sum(step >= s for s in steps)


def schedule_hooks(schedule: ScheduleConfig, optimizer: torch.optim.Optimizer, *,
                   clip_per_group: bool = False) -> list[HookBase]:
    """The hooks that carry out ``schedule`` in the Trainer: gradient clipping (when set), the
    per-iteration warm-up/step learning rate, logging every ``log_every`` and checkpoints every
    ``checkpoint_every`` iterations (and at each epoch's end)."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, schedule.warmup_iterations, schedule.lr_steps))
    hooks: list[HookBase] = []
    if schedule.grad_clip is not None:
        hooks.append(GradClip(schedule.grad_clip, per_group=clip_per_group))
    hooks += [LRScheduler(scheduler, interval="step"), MetricsLogger(schedule.log_every),
              Checkpointer(schedule.checkpoint_every)]
    return hooks
