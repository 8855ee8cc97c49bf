"""The iteration schedule the detectors and PDSL share: SGD settings, linear warm-up and x0.1 steps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class ScheduleConfig:
    iterations: int = 50000
    batch_size: int = 1
    lr: float = 0.00125
    momentum: float = 0.9
    weight_decay: float = 0.0001
    warmup_iterations: int = 0
    lr_steps: list[int] = field(default_factory=list)  # iterations after which lr is multiplied by 0.1
    grad_clip: float | None = None
    log_every: int = 20
    checkpoint_every: int | None = 500


def lr_factor(step: int, warmup: int, steps: Sequence[int]) -> float:
    """Learning-rate multiplier at iteration ``step`` (0-based): linear warm-up from 1/warmup, then
    0.1 per milestone passed."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return warm * 0.1 ** sum(step >= s for s in steps)
