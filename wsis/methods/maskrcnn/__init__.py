"""The fully supervised reference: Mask R-CNN trained on the ground-truth instance masks, with the
detector, augmentation and schedule WISE uses (BENCHMARK.md: "same backbone and schedule as WISE's").

Where the parts are: the network, its augmentation and inference: :mod:`wsis.detectors.maskrcnn`;
the training loop and the iteration schedule (what runs when ``iterations`` is not a whole number
of epochs): :mod:`wsis.detectors.training`, :mod:`wsis.engine.schedule`; WISE's test-time
refinement (``test.refine``): :mod:`wsis.detectors.refine`.

This module also holds what WISE shares with it: :func:`fit_detector`, :class:`DetectorPredictor`
and :func:`load_detector`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from wsis.config import load_config, to_dict
from wsis.data.images import load_image
from wsis.detectors.maskrcnn import (DetectorConfig, DetectorDataConfig, DetectorTestConfig, InstancesFn, LabelMap,
                                     build_maskrcnn, ground_truth_instances, predict_instances)
from wsis.detectors.refine import refine_with_proposals
from wsis.detectors.training import train_detector
from wsis.engine.schedule import ScheduleConfig
from wsis.methods.base import Predictor, register
from wsis.methods.trained import MODEL_FILE, load_weights, read_trained, save_trained
from wsis.proposals.config import ProposalConfig
from wsis.structures import ImageRecord, Instances, RecordSet


@dataclass
class MaskRCNNTestConfig(DetectorTestConfig):
    # Test-time refinement (WISE Fig. 3): swap each predicted mask for the proposal of highest IoU.
    refine: bool = False


@dataclass
class MaskRCNNMethodConfig:
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    model: DetectorConfig = field(default_factory=DetectorConfig)
    data: DetectorDataConfig = field(default_factory=DetectorDataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    test: MaskRCNNTestConfig = field(default_factory=MaskRCNNTestConfig)


# The layout before the skeleton (issue 16): see wsis.config.check_moved_keys.
MaskRCNNMethodConfig.MOVED_KEYS = {  # type: ignore[attr-defined]
    "detector.min_size": "data.min_size", "detector.max_size": "data.max_size",
    **{f"detector.{k}": f"test.{k}" for k in ("score_threshold", "mask_threshold", "detections_per_image",
                                               "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test")},
    "detector": "model", "augment": "data", "refine": "test.refine"}


def fit(records: RecordSet, config: str | Path | None = None, overrides: Sequence[str] = (),
        workdir: str | Path = "runs/maskrcnn") -> "DetectorPredictor":
    """Train Mask R-CNN on the records' ground-truth masks; resumes from ``workdir`` when interrupted."""
    cfg = load_config(MaskRCNNMethodConfig, config, list(overrides))
    for r in records:
        ground_truth_instances(r)  # every image must have masks: fail before training starts
    return fit_detector(records, ground_truth_instances, cfg, Path(workdir), MaskRCNNPredictor,
                        {"signal": "ground-truth masks"})


def load(workdir: str | Path, overrides: Sequence[str] = ()) -> "DetectorPredictor":
    return load_detector(workdir, MaskRCNNMethodConfig, MaskRCNNPredictor, overrides=overrides)


# ---------------------------------------------------------------- shared with WISE

def fit_detector(records: RecordSet, instances_fn: InstancesFn, cfg: MaskRCNNMethodConfig, workdir: Path,
                 predictor: type["DetectorPredictor"], extra_meta: dict[str, Any]) -> "DetectorPredictor":
    """Train Mask R-CNN on ``instances_fn(record, epoch)`` for every record; save it with ``method.json``."""
    meta = {"method": predictor.method, "config": to_dict(cfg), "category_ids": sorted(records.categories),
            "categories": {str(k): v for k, v in records.categories.items()}, **extra_meta}
    started = time.perf_counter()
    model, labels = train_detector(records, instances_fn, cfg, workdir, meta)
    save_trained(workdir, model, meta, started)
    return predictor(model, cfg, labels, records.categories, workdir)


def load_detector(workdir: str | Path, cfg_cls: type, predictor: type["DetectorPredictor"],
                  migrate: Any = None, overrides: Sequence[str] = ()) -> "DetectorPredictor":
    """The trained detector of a workdir (its ImageNet weights are not needed: the checkpoint has all)."""
    workdir = Path(workdir)
    meta, cfg = read_trained(workdir, cfg_cls, migrate, overrides)
    labels = LabelMap(meta["category_ids"])
    model = build_maskrcnn(cfg.model, len(labels), pretrained=False, data=cfg.data, test=cfg.test)
    load_weights(model, workdir / MODEL_FILE)
    categories = {int(k): v for k, v in meta["categories"].items()}
    return predictor(model, cfg, labels, categories, workdir)


class DetectorPredictor(Predictor):
    """A trained Mask R-CNN; ``refine`` (``test.refine``, settable) switches test-time refinement."""

    inference_keys = ("device", "proposals", "test")

    def __init__(self, model: torch.nn.Module, cfg: MaskRCNNMethodConfig, labels: LabelMap,
                 categories: dict[int, str], workdir: Path) -> None:
        super().__init__(cfg, labels.category_ids, categories, workdir)
        self.model = model.to(self.device).eval()
        self.labels = labels
        self.refine = cfg.test.refine

    def predict(self, record: ImageRecord, image: np.ndarray | None = None) -> Instances:
        image = load_image(record.path) if image is None else image
        found = predict_instances(self.model, image, self.labels, self.device, self.cfg.test.mask_threshold)
        if self.refine and len(found):
            found = refine_with_proposals(found, self.proposals(record))
        return found



@register("maskrcnn", MaskRCNNMethodConfig)
class MaskRCNNPredictor(DetectorPredictor):
    """Mask R-CNN trained on ground-truth masks."""
