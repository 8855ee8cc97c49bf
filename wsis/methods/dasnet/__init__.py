"""DASNet (Zhang et al., "Detection, Attention and Segmentation Network for semi-supervised instance
and semantic segmentation", ``papers/003``): boxes for every training image, masks for a few; a
detector trained on the boxes, an attention module turning its feature pyramid into class-specific
features, and a deconvolution network that only has to separate object from background inside the
boxes -- which is why a handful of masks goes a long way.

Where each part of the paper is:

=======================================  ============================================================
paper                                    code
=======================================  ============================================================
3.2 detection module (SSD; F and B)      :mod:`~wsis.methods.dasnet.detector` (``Detector``)
3.3 attention, **Eq. 1**                 :func:`wsis.methods.dasnet.attention.attend`
3.4 top-down deconvolution merge         :class:`wsis.methods.dasnet.segmentation.TopDownMerge`
3.4.1 semantic head and loss             ``SegmentationNet(task="semantic")``, ``semantic_loss``
3.4.2 position-sensitive 2k^2 maps       ``SegmentationNet(task="instance")``, ``assemble``,
                                         ``instance_losses`` (score sigmoid CE + mask softmax)
3.5 p/n box sampling                     :func:`wsis.methods.dasnet.segmentation.sample_boxes`
3.5 stage-wise training                  :func:`fit` (below) and :mod:`~wsis.methods.dasnet.model`
3.5 inference (per box; max over class)  :mod:`~wsis.methods.dasnet.inference`
4.1 320 x 320, augmentation, #boxes      :mod:`~wsis.methods.dasnet.data`
4.1 optimisation                         :mod:`~wsis.methods.dasnet.config`, ``configs/dasnet.yaml``
=======================================  ============================================================

Training (:func:`fit`), stage-wise as in the paper, each stage resumable from its own
``<workdir>/<stage>/last.pt`` through the shared :class:`~wsis.engine.Trainer`:

1. ``detector/``: the detector on the boxes of all images (``detector.weights`` reuses a finished one);
2. ``semantic/`` and ``instance/`` (``model.tasks``): one segmentation network each, on the mask images
   only (``data.masks_for``), the detector frozen, ground-truth class-specific boxes feeding Eq. 1.

A finished stage leaves ``<stage>/model.pt`` and is not trained again; the run ends with
``model.pt`` + ``method.json`` (:mod:`wsis.methods.trained`).

Differences from the paper (reasons in the module docstrings): EfficientNet-Lite0 instead of VGG-16
under the SSD (CPU; packaged ImageNet weights); Eq. 1 keeps every grid cell a box overlaps; the
paper's segmentation schedule has no stated length (we stop 10K iterations after the last lr step).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from wsis import masks as mask_ops
from wsis.config import load_config, to_dict
from wsis.data.images import load_image
from wsis.engine import Trainer, pick_device
from wsis.engine.schedule import ScheduleConfig, schedule_hooks, schedule_length, total_iterations
from wsis.engine.checkpoint import save_checkpoint
from wsis.errors import InputError
from wsis.methods.base import Predictor, register
from wsis.methods.dasnet.config import DASNetConfig
from wsis.methods.dasnet.data import (DetectionDataset, SegmentationDataset, collate_detection,
                                      collate_segmentation, split_supervision)
from wsis.methods.dasnet.inference import (Detections, box_masks, detect, instance_probs, network_input, paste,
                                           semantic_labels)
from wsis.methods.dasnet.model import TASKS, DASNet, SegmentationStage, detector_step, segmentation_step
from wsis.methods.trained import MODEL_FILE, load_weights, read_trained, save_trained, trained_categories
from wsis.structures import ImageRecord, Instances, RecordSet

STAGE_MODEL = "model.pt"
MIN_STEPS_PER_EPOCH = 25   # small mask sets are repeated within an epoch (data.py: _Augmented)


def _check(cfg: DASNetConfig, source: str) -> None:
    problems = []
    if not cfg.model.tasks or any(t not in TASKS for t in cfg.model.tasks):
        problems.append(f"model.tasks must be a non-empty subset of {list(TASKS)}, got {cfg.model.tasks}")
    seg = cfg.model.segmentation
    if seg.k < 1 or seg.roi_size % seg.k:
        problems.append(f"model.segmentation.roi_size ({seg.roi_size}) must be a multiple of model.segmentation.k ({seg.k})")
    if seg.positives < 0 or seg.negatives < 0:
        problems.append("model.segmentation.positives and negatives must be >= 0")
    if cfg.data.size < 32 or not 0 < cfg.data.min_crop <= 1 or cfg.data.max_expand < 1:
        problems.append("data.size >= 32, 0 < data.min_crop <= 1 and data.max_expand >= 1 are required")
    for name in ("detection", *cfg.model.tasks):
        schedule_length(getattr(cfg.schedule, name), f"schedule.{name}")
    if problems:
        raise InputError(source, problems[0])


def _train_stage(module: torch.nn.Module, params: list[torch.nn.Parameter], dataset, collate, step,
                 sched: ScheduleConfig, cfg: DASNetConfig, stage_dir: Path, meta: dict[str, Any]) -> None:
    steps_per_epoch = math.ceil(len(dataset) / sched.batch_size)
    steps = total_iterations(sched, steps_per_epoch, f"schedule.{stage_dir.name}")
    optimizer = torch.optim.SGD(params, lr=sched.lr, momentum=sched.momentum, weight_decay=sched.weight_decay)
    meta.setdefault("stages", {})[stage_dir.name] = {"epochs": math.ceil(steps / steps_per_epoch), "steps": steps,
                                                      "samples_per_epoch": len(dataset)}
    # The checkpoint's settings are this stage's only: a resumed run skips finished stages, so the
    # run-wide "stages" table differs then, and the resume check would refuse it.
    settings = {**{k: v for k, v in meta.items() if k != "stages"}, "stage": stage_dir.name,
                **meta["stages"][stage_dir.name]}
    # exactly the schedule's iterations: the last epoch is cut short where the count ends inside it
    Trainer(module, optimizer, step_fn=step, workdir=stage_dir, **schedule_length(sched, f"schedule.{stage_dir.name}"),
            hooks=schedule_hooks(sched, optimizer), device=cfg.device, seed=cfg.seed, batch_size=sched.batch_size,
            num_workers=cfg.num_workers, collate_fn=collate, config=settings, find_unused_parameters=True).fit(dataset)


def _repeat(n_records: int, sched: ScheduleConfig) -> int:
    """Copies of the records per epoch so that an epoch has about min(25, iterations) steps (an
    epoch schedule keeps its epochs: one copy)."""
    if sched.iterations is None:
        return 1
    steps = min(MIN_STEPS_PER_EPOCH, max(sched.iterations, 1))
    return max(1, (steps * sched.batch_size) // max(n_records, 1))


def fit(records: RecordSet, config: str | Path | None = None, overrides: Sequence[str] = (),
        workdir: str | Path = "runs/dasnet") -> "DASNetPredictor":
    """Train DASNet on the boxes of all records and the masks of ``data.masks_for``; resumes from ``workdir``."""
    cfg = load_config(DASNetConfig, config, list(overrides))
    _check(cfg, str(config) if config else "command line")
    workdir = Path(workdir)
    box_records, mask_records = split_supervision(records, cfg.data.masks_for)
    category_ids = sorted(records.categories)
    label_of = {c: i + 1 for i, c in enumerate(category_ids)}
    torch.manual_seed(cfg.seed)
    model = DASNet(cfg, len(category_ids))
    started = time.perf_counter()
    meta: dict[str, Any] = {"method": "dasnet", "config": to_dict(cfg), "category_ids": category_ids,
                            "categories": {str(k): v for k, v in records.categories.items()},
                            "signal": f"boxes of {len(box_records)} images, masks of {len(mask_records)}",
                            "mask_image_ids": sorted(r.image_id for r in mask_records)}

    # Stage 1: the detector on every image's boxes.
    det_dir = workdir / "detector"
    if cfg.model.detector.weights:
        load_weights(model.detector, Path(cfg.model.detector.weights))
        meta["detector_from"] = str(cfg.model.detector.weights)
    elif (det_dir / STAGE_MODEL).is_file():
        load_weights(model.detector, det_dir / STAGE_MODEL)
    else:
        sched = cfg.schedule.detection
        data = DetectionDataset(box_records, label_of, cfg.data, cfg.seed,
                                repeat=_repeat(len(box_records), sched))
        _train_stage(model.detector, [p for p in model.detector.parameters() if p.requires_grad], data,
                     collate_detection, detector_step, sched, cfg, det_dir, meta)
        save_checkpoint(det_dir / STAGE_MODEL, {"model": model.detector.state_dict()})

    # Stage 2: the segmentation networks on the mask images, detector frozen (3.5).
    for task in cfg.model.tasks:
        stage_dir = workdir / task
        segmenter = model.segmenters[task]
        if (stage_dir / STAGE_MODEL).is_file():
            load_weights(segmenter, stage_dir / STAGE_MODEL)
            continue
        sched = getattr(cfg.schedule, task)
        stage = SegmentationStage(model.detector, segmenter, cfg.model.segmentation.k, cfg.model.segmentation.roi_size,
                                  cfg.model.segmentation.finetune_detector)
        params = list(segmenter.parameters())
        if cfg.model.segmentation.finetune_detector:
            params += [p for p in model.detector.parameters() if p.requires_grad]
        data = SegmentationDataset(mask_records, label_of, cfg.data, cfg.model.segmentation, cfg.seed,
                                   repeat=_repeat(len(mask_records), sched))
        _train_stage(stage, params, data, collate_segmentation, segmentation_step, sched, cfg, stage_dir, meta)
        save_checkpoint(stage_dir / STAGE_MODEL, {"model": segmenter.state_dict()})
    save_trained(workdir, model, meta, started)
    return DASNetPredictor(model, cfg, category_ids, records.categories)


def migrate_config(config: dict) -> dict:
    """A config saved before the shape merge: ``schedule.detector`` is now ``schedule.detection``."""
    schedule = config.get("schedule")
    if isinstance(schedule, dict) and "detector" in schedule:
        config = {**config, "schedule": {("detection" if k == "detector" else k): v for k, v in schedule.items()}}
    return config


def load(workdir: str | Path, overrides: Sequence[str] = ()) -> "DASNetPredictor":
    """The trained DASNet of ``workdir``; ``overrides`` may change ``device`` and ``test.*``."""
    workdir = Path(workdir)
    meta, cfg = read_trained(workdir, DASNetConfig, migrate_config, overrides=overrides)
    category_ids, categories = trained_categories(meta)
    model = DASNet(cfg, len(category_ids), pretrained=False)
    load_weights(model, workdir / MODEL_FILE)
    return DASNetPredictor(model, cfg, category_ids, categories)


@register("dasnet", DASNetConfig)
class DASNetPredictor(Predictor):
    """A trained DASNet. ``masks`` (from ``test.masks``, settable): ``"instance"`` for the instance
    head's masks, ``"boxes"`` for the boxes-as-masks baseline on the same detections.

    DASNet uses no object proposals, so its config has no ``proposals`` section and the base's
    proposal cache is not set up (``proposal_cache`` is None)."""

    inference_keys = ("device", "test")

    def __init__(self, model: DASNet, cfg: DASNetConfig, category_ids: list[int], categories: dict[int, str]) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.category_ids = [int(c) for c in category_ids]
        self.categories = dict(categories)
        self.proposal_cache = None
        self.model = model.to(self.device).eval()
        self.masks = cfg.test.masks

    def _detect(self, image: np.ndarray, given: Instances | None = None):
        x, sx, sy = network_input(image, self.cfg.data.size)
        x = x.to(self.device)
        with torch.no_grad():
            det = detect(self.model, x, sx, sy, self.cfg.test) if given is None else self._as_detections(given, sx, sy)
            features = self.model.detector.features(x)
        return det, features

    def _as_detections(self, given: Instances, sx: float, sy: float) -> Detections:
        index = {c: i for i, c in enumerate(self.category_ids)}
        labels = np.asarray([index[int(c)] for c in given.labels], np.int64)
        boxes_net = torch.as_tensor(given.boxes / np.array([sx, sy, sx, sy], np.float32), device=self.device)
        return Detections(given.boxes, labels, given.scores, boxes_net)

    def predict_given_boxes(self, record: ImageRecord, boxes: Instances) -> tuple[Instances, np.ndarray]:
        """Instances and semantic map with ``boxes`` (category ids as labels) in place of the
        detector's: the segmentation module alone (a diagnosis with ground-truth boxes)."""
        image = load_image(record.path)
        det, features = self._detect(image, boxes)
        h, w = image.shape[:2]
        semantic = semantic_labels(self.model, features, det, h, w, self.category_ids, self.cfg.test) \
            if "semantic" in self.model.segmenters else np.zeros((h, w), np.int64)
        return self._instances(image, det, features), semantic

    def _instances(self, image: np.ndarray, det, features) -> Instances:
        h, w = image.shape[:2]
        if self.masks == "boxes":
            masks = box_masks(det.boxes, h, w)
        else:
            if "instance" not in self.model.segmenters:
                raise InputError("config", "this model has no instance segmentation network (model.tasks)")
            probs = instance_probs(self.model, features, det.boxes_net, self.cfg.test).cpu().numpy()
            masks = np.stack([paste(p, b, h, w, self.cfg.test.mask_threshold) for p, b in zip(probs, det.boxes)]) \
                if len(probs) else np.zeros((0, h, w), bool)
        keep = masks.any(axis=(1, 2))
        labels = self.labels_of(det.labels[keep])
        return Instances((h, w), boxes=det.boxes[keep], labels=labels, scores=det.scores[keep],
                         masks=mask_ops.encode_many(masks[keep]))

    def predict(self, record: ImageRecord, image: np.ndarray | None = None) -> Instances:
        image = load_image(record.path) if image is None else image
        return self._instances(image, *self._detect(image))

    def predict_semantic(self, record: ImageRecord, image: np.ndarray | None = None) -> np.ndarray:
        """(H, W) category ids, 0 for background."""
        if "semantic" not in self.model.segmenters:
            raise InputError("config", "this model has no semantic segmentation network (model.tasks)")
        image = load_image(record.path) if image is None else image
        det, features = self._detect(image)
        h, w = image.shape[:2]
        return semantic_labels(self.model, features, det, h, w, self.category_ids, self.cfg.test)

    def predict_both(self, record: ImageRecord) -> tuple[Instances, np.ndarray]:
        """Instances and the semantic map from one detection pass."""
        image = load_image(record.path)
        det, features = self._detect(image)
        h, w = image.shape[:2]
        return (self._instances(image, det, features),
                semantic_labels(self.model, features, det, h, w, self.category_ids, self.cfg.test))
