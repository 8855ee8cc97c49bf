"""The fully supervised reference: Mask R-CNN trained on the ground-truth instance masks, with the
detector, augmentation and schedule WISE uses (BENCHMARK.md: "same backbone and schedule as WISE's").

The schedule is given in iterations as in the paper (``schedule.iterations`` steps of
``schedule.batch_size`` images); the shared :class:`~wsis.engine.Trainer` runs whole epochs, so
training runs ``ceil(iterations / steps_per_epoch)`` epochs, i.e. up to one epoch more than the
iterations asked for (the log says how many steps ran). The learning rate is stepped per iteration
(linear warm-up, then x0.1 at each of ``lr_steps``).

This module also holds what WISE shares with it: :func:`train_detector`, :class:`DetectorPredictor`
and :func:`load_detector`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from wsis.config import load_config, to_dict
from wsis.data.images import load_image
from wsis.detectors.maskrcnn import (AugmentConfig, DetectorConfig, InstanceDataset, InstancesFn, LabelMap,
                                     build_maskrcnn, collate, detector_optimizer, ground_truth_instances,
                                     maskrcnn_step, predict_instances)
from wsis.detectors.refine import refine_with_proposals
from wsis.engine import Trainer, pick_device
from wsis.errors import InputError
from wsis.methods.trained import MODEL_FILE, load_weights, read_trained, save_trained
from wsis.methods.prm import ProposalConfig
from wsis.proposals.cache import proposal_cache
from wsis.structures import ImageRecord, Instances, RecordSet



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


@dataclass
class MaskRCNNMethodConfig:
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Test-time refinement (WISE Fig. 3): swap each predicted mask for the proposal of highest IoU.
    refine: bool = False
    proposals: ProposalConfig = field(default_factory=ProposalConfig)


def fit(records: RecordSet, config: str | Path | None = None, overrides: Sequence[str] = (),
        workdir: str | Path = "runs/maskrcnn") -> "DetectorPredictor":
    """Train Mask R-CNN on the records' ground-truth masks; resumes from ``workdir`` when interrupted."""
    cfg = load_config(MaskRCNNMethodConfig, config, list(overrides))
    for r in records:
        ground_truth_instances(r)  # every image must have masks: fail before training starts
    return train_detector(records, ground_truth_instances, cfg, Path(workdir), "maskrcnn",
                          {"signal": "ground-truth masks"})


def load(workdir: str | Path) -> "DetectorPredictor":
    return load_detector(workdir, MaskRCNNMethodConfig)


# ---------------------------------------------------------------- shared with WISE

def lr_factor(step: int, warmup: int, steps: Sequence[int]) -> float:
    """Learning-rate multiplier at iteration ``step`` (0-based): linear warm-up from 1/warmup, then
    0.1 per milestone passed."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return warm * 0.1 ** sum(step >= s for s in steps)


def train_detector(records: RecordSet, instances_fn: InstancesFn, cfg: MaskRCNNMethodConfig, workdir: Path,
                   method: str, extra_meta: dict[str, Any]) -> "DetectorPredictor":
    """Train Mask R-CNN on ``instances_fn(record, epoch)`` for every record; save it with ``method.json``."""
    if len(records) == 0:
        raise InputError(records.name or "dataset", "no training images")
    category_ids = sorted(records.categories)
    labels = LabelMap(category_ids)
    torch.manual_seed(cfg.seed)
    model = build_maskrcnn(cfg.detector, len(labels))
    dataset = InstanceDataset(records.records, instances_fn, labels, cfg.augment, seed=cfg.seed)
    sched = cfg.schedule
    steps_per_epoch = math.ceil(len(dataset) / sched.batch_size)
    epochs = math.ceil(sched.iterations / steps_per_epoch)
    optimizer = detector_optimizer(model, sched.lr, sched.momentum, sched.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, sched.warmup_iterations, sched.lr_steps))
    meta = {"method": method, "config": to_dict(cfg), "category_ids": category_ids,
            "categories": {str(k): v for k, v in records.categories.items()}, "epochs": epochs,
            "steps": epochs * steps_per_epoch, **extra_meta}
    started = time.perf_counter()
    Trainer(model, optimizer, step_fn=maskrcnn_step, scheduler=scheduler, scheduler_interval="step",
            workdir=workdir, epochs=epochs, device=cfg.device, seed=cfg.seed, batch_size=sched.batch_size,
            num_workers=cfg.num_workers, collate_fn=collate, log_every=sched.log_every, grad_clip=sched.grad_clip,
            checkpoint_every=sched.checkpoint_every, config=meta,
            # under torchrun, a step whose images have no instance leaves the mask head out of the graph
            find_unused_parameters=True).fit(dataset)
    save_trained(workdir, model, meta, started)
    return DetectorPredictor(model, cfg, labels, records.categories, workdir)


def load_detector(workdir: str | Path, cfg_cls: type) -> "DetectorPredictor":
    """The trained detector of a workdir (its ImageNet weights are not needed: the checkpoint has all)."""
    workdir = Path(workdir)
    meta, cfg = read_trained(workdir, cfg_cls)
    labels = LabelMap(meta["category_ids"])
    model = build_maskrcnn(cfg.detector, len(labels), pretrained=False)
    load_weights(model, workdir / MODEL_FILE)
    categories = {int(k): v for k, v in meta["categories"].items()}
    return DetectorPredictor(model, cfg, labels, categories, workdir)


class DetectorPredictor:
    """A trained Mask R-CNN; ``refine`` (from the config, settable) switches test-time refinement."""

    def __init__(self, model: torch.nn.Module, cfg: MaskRCNNMethodConfig, labels: LabelMap,
                 categories: dict[int, str], workdir: Path) -> None:
        self.device = pick_device(cfg.device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.labels = labels
        self.category_ids = labels.category_ids
        self.categories = categories
        self.refine = cfg.refine
        self.proposal_cache = proposal_cache(cfg.proposals.cache_dir)

    def predict(self, record: ImageRecord, image: np.ndarray | None = None) -> Instances:
        image = load_image(record.path) if image is None else image
        found = predict_instances(self.model, image, self.labels, self.device, self.cfg.detector.mask_threshold)
        if self.refine and len(found):
            proposals = self.proposal_cache.get_or_compute(record.path, self.cfg.proposals.method,
                                                           **self.cfg.proposals.settings)
            found = refine_with_proposals(found, proposals)
        return found

    def predict_records(self, records: RecordSet | Sequence[ImageRecord], progress: bool = True
                        ) -> dict[int, Instances]:
        return {r.image_id: self.predict(r)
                for r in tqdm(list(records), desc="predict", disable=not progress, unit="img")}
