"""Training engine: the shared loop and its hooks, checkpoints and torch.distributed helpers."""
from wsis.engine.checkpoint import load_checkpoint, save_checkpoint
from wsis.engine.distributed import DistInfo, init_distributed, pick_device
from wsis.engine.hooks import Checkpointer, GradClip, HookBase, LRScheduler, MetricsLogger
from wsis.engine.trainer import EpochSampler, Trainer

__all__ = ["Checkpointer", "DistInfo", "EpochSampler", "GradClip", "HookBase", "LRScheduler", "MetricsLogger",
           "Trainer", "init_distributed", "load_checkpoint", "pick_device", "save_checkpoint"]
