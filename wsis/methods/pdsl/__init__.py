"""PDSL (Shen et al., "Parallel Detection-and-Segmentation Learning for Weakly Supervised Instance
Segmentation", ``papers/002``) as a method: one network trained end to end on image tags, with a
WSDDN + OICR detection branch and a GrabCut-seeded, self-trained segmentation branch tied by the
instance-activation correlation loss.

Training (``fit``): the tags only (ground truth is stripped before anything else sees the records);
proposals of every training image are generated first (cached on disk by image content and
settings); then the shared :class:`~wsis.engine.Trainer` runs exactly the schedule's iterations (or epochs)
(lr warm-up and x0.1 steps per iteration, as :mod:`wsis.engine.schedule`; per-group gradient
clipping as a :class:`~wsis.engine.GradClip` hook), checkpointing to ``workdir/last.pt`` and resuming from it exactly:
data order, augmentation and the mask branch's RoI sample are functions of (seed, epoch, image), and
GrabCut masks are a function of (image, box), cached under ``grabcut.cache_dir``.

Workdir: ``proposals/`` and ``grabcut/`` (unless cache dirs are given), ``last.pt``, ``log.jsonl``,
``model.pt``, ``method.json`` (config, classes, signal, train_seconds summed over resumed runs).

Ablations (paper Table 1): ``model.refine_heads=0`` (n^r), ``model.mask_heads=0`` (n^m),
``loss.correlation=false`` (L_ACL), ``loss.n_seed=1`` (n_seed). The CPU configs (``pdsl_cpu.yaml``,
``demo_pdsl.yaml``) have L_ACL off: on their short schedules it drives every class-specific mask
under the 0.5 cut (``benchmarks/results/config_notes.md`` and ``benchmarks/results/pdsl.md`` give
the measurements); ``loss.correlation=true`` turns it back on.

Where each equation is (one hop from here): :mod:`wsis.detectors.wsddn` (detection branch: WSDDN + OICR
refinement heads, Eqs. 2-4), :mod:`wsis.methods.pdsl.seeds` (seed sample acquisition, cached GrabCut),
:mod:`wsis.methods.pdsl.masks` (mask heads, Eq. 5, correlation loss Eqs. 6-8),
:mod:`wsis.methods.pdsl.model` (the network and its loss, Eq. 1), :mod:`wsis.methods.pdsl.data`
(training samples and augmentation), :mod:`wsis.methods.pdsl.inference` (multi-scale flipped test),
:mod:`wsis.methods.pdsl.config`.

Differences from the paper, and why (details in each module):

* Proposals: the toolkit's superpixel-hierarchy proposals (their boxes) instead of MCG, which cannot
  be obtained here; precomputed MCG/COB/selective-search files can be named in ``proposals``.
* Backbone: ResNet-50 with a dilated res5 (stride 16) stands in for ResNet50-WS (GPU config);
  EfficientNet-Lite0, also at stride 16, on the CPU. A 1x1 conv reduces the backbone's channels
  before the RoI ops (fc6 would otherwise take 2048 x 7 x 7 inputs).
* Loss normalisation: the proposal sums of Eqs. 3 and 5 are divided by the number of proposals and
  Eq. 5's BCE is averaged over pixels (OICR's and Mask R-CNN's definitions); Eq. 3's background
  weight is OICR's.
* GrabCut masks are cached on disk per (image, box) instead of recomputed every iteration; the seeds
  themselves are chosen afresh at every step from the current detector, as in the paper.
* fc6/fc7 start from scratch (WSDDN/OICR inherit VGG's), so they get Detectron2's fc initialisation
  instead of std 0.01, which left WSDDN's loss at its starting value in our tests.
* Gradient norm clipped at 5 (both configs): WSDDN's log loss diverged without it at lr >= 0.002.
* Test-time selection ranks (proposal, class) pairs without a score threshold: with n^r = 0 the
  scores are WSDDN's S^0, about 1/(P C) each.
* On a CPU the mask branch sees a sample of the proposals per image (``loss.mask_rois``), the
  backbone is frozen, the mask heads learn at 4x the rate, and the schedule, scales and proposal count
  are reduced (``wsis/configs/pdsl_cpu.yaml`` says why for each).
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
from wsis.engine import Trainer
from wsis.engine.distributed import is_main
from wsis.engine.schedule import schedule_hooks, schedule_length, total_iterations
from wsis.errors import InputError
from wsis.methods.base import Predictor, register
from wsis.methods.pdsl.config import PDSLMethodConfig, PDSLScheduleConfig
from wsis.methods.pdsl.data import PDSLDataset, ProposalBoxes, collate
from wsis.methods.pdsl.inference import detect_and_segment
from wsis.methods.pdsl.model import PDSLNet, build_pdsl
from wsis.methods.pdsl.seeds import GrabCutCache
from wsis.methods.trained import MODEL_FILE, load_weights, read_trained, save_trained, trained_categories
from wsis.proposals.cache import ProposalCache
from wsis.structures import ImageRecord, Instances, RecordSet


def tags_only(records: RecordSet) -> RecordSet:
    """The records with their tags and nothing else: ground truth must not reach training."""
    return RecordSet([ImageRecord(r.image_id, r.path, r.width, r.height, tags=r.tags, file_name=r.file_name)
                      for r in records], dict(records.categories), records.name)


def _check(cfg: PDSLMethodConfig, source: str) -> None:
    problems = []
    if cfg.loss.n_seed < 1:
        problems.append(f"loss.n_seed must be >= 1, got {cfg.loss.n_seed}")
    if cfg.loss.mask_rois is not None and cfg.loss.mask_rois < 1:
        problems.append(f"loss.mask_rois must be >= 1 or null, got {cfg.loss.mask_rois}")
    if cfg.loss.correlation_target not in ("score", "relative"):
        problems.append(f"loss.correlation_target must be 'score' or 'relative', got {cfg.loss.correlation_target!r}")
    if not cfg.data.scales or not cfg.test.scales:
        problems.append("data.scales and test.scales must not be empty")
    if not 0 < cfg.data.crop <= 1:
        problems.append(f"data.crop must be in (0, 1], got {cfg.data.crop}")
    if problems:
        raise InputError(source, problems[0])


def cache_dirs(cfg: PDSLMethodConfig, workdir: Path) -> tuple[Path, Path]:
    proposals = cfg.proposals.cache_path(workdir)
    grabcut = Path(cfg.grabcut.cache_dir) if cfg.grabcut.cache_dir else workdir / "grabcut"
    return proposals, grabcut


def pdsl_optimizer(model: PDSLNet, sched: PDSLScheduleConfig) -> torch.optim.SGD:
    """SGD over the trainable parameters; the backbone's at ``backbone_lr_mult`` x the rate, the mask
    heads' at ``mask_lr_mult`` x."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    masks = [p for p in model.masker.parameters() if p.requires_grad]
    special = {id(p) for p in backbone + masks}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in special]
    groups = [{"params": rest}, {"params": masks, "lr": sched.lr * sched.mask_lr_mult}]
    if backbone:
        groups.append({"params": backbone, "lr": sched.lr * sched.backbone_lr_mult})
    return torch.optim.SGD(groups, lr=sched.lr, momentum=sched.momentum, weight_decay=sched.weight_decay)


def training_data(cfg: PDSLMethodConfig, model: PDSLNet, records: Sequence[ImageRecord], category_ids: list[int],
                  proposal_cache: ProposalCache, grabcut_dir: Path) -> tuple[PDSLDataset, GrabCutCache]:
    """The training samples of ``records`` and their GrabCut cache, whose ``masks(image_path, boxes)``
    is the ``seed_masks`` argument of ``model``'s forward."""
    grabcut = GrabCutCache(grabcut_dir, cfg.grabcut.iterations, cfg.grabcut.margin, cfg.grabcut.max_side)
    dataset = PDSLDataset(list(records), category_ids,
                          ProposalBoxes(proposal_cache, cfg.proposals.method, cfg.proposals.settings),
                          cfg.data, model.backbone.normalize, cfg.seed)
    return dataset, grabcut


def fit(records: RecordSet, config: str | Path | None = None, overrides: Sequence[str] = (),
        workdir: str | Path = "runs/pdsl") -> "PDSLPredictor":
    """Train PDSL on the records' tags; resumes from ``workdir`` when interrupted."""
    cfg = load_config(PDSLMethodConfig, config, list(overrides))
    _check(cfg, str(config) if config else "command line")
    schedule_length(cfg.schedule)
    workdir = Path(workdir)
    records = tags_only(records)
    if len(records) == 0 or not any(r.tags for r in records):
        raise InputError(records.name or "dataset", "no image has tags: PDSL trains on image-level labels")
    category_ids = sorted(records.categories)
    proposal_dir, grabcut_dir = cache_dirs(cfg, workdir)
    proposal_cache = ProposalCache(proposal_dir)
    started = time.perf_counter()
    proposal_cache.generate_all([r.path for r in records], cfg.proposals.method, workers=1,
                                progress=is_main(), **cfg.proposals.settings)

    torch.manual_seed(cfg.seed)
    model = build_pdsl(cfg.model, len(category_ids), cfg.loss, cfg.seed)
    dataset, grabcut = training_data(cfg, model, records.records, category_ids, proposal_cache, grabcut_dir)
    sched = cfg.schedule
    steps_per_epoch = math.ceil(len(dataset) / sched.batch_size)
    iterations = total_iterations(sched, steps_per_epoch)
    optimizer = pdsl_optimizer(model, sched)
    meta: dict[str, Any] = {"method": "pdsl", "config": to_dict(cfg), "category_ids": category_ids,
                            "categories": {str(k): v for k, v in records.categories.items()},
                            "signal": "image-level tags", "epochs": math.ceil(iterations / steps_per_epoch),
                            "steps": iterations}

    def step(net: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        losses = net(batch, grabcut.masks)
        return sum(losses.values()), {k: v.detach() for k, v in losses.items()}

    hooks = schedule_hooks(sched, optimizer, clip_per_group=sched.grad_clip_per_group)
    Trainer(model, optimizer, step_fn=step, workdir=workdir, **schedule_length(sched), hooks=hooks,
            device=cfg.device, seed=cfg.seed, batch_size=sched.batch_size, num_workers=cfg.num_workers,
            collate_fn=collate, config=meta,
            # an untagged image leaves the mask branch out of the graph
            find_unused_parameters=True).fit(dataset)
    meta["grabcut_computed_this_run"] = grabcut.computed
    save_trained(workdir, model, meta, started)
    return PDSLPredictor(model, cfg, category_ids, records.categories, workdir)


def load(workdir: str | Path, overrides: Sequence[str] = ()) -> "PDSLPredictor":
    workdir = Path(workdir)
    meta, cfg = read_trained(workdir, PDSLMethodConfig, overrides=overrides)
    category_ids, categories = trained_categories(meta)
    model = build_pdsl(cfg.model, len(category_ids), cfg.loss, cfg.seed, pretrained=False)
    load_weights(model, workdir / MODEL_FILE)
    return PDSLPredictor(model, cfg, category_ids, categories, workdir)


@register("pdsl", PDSLMethodConfig)
class PDSLPredictor(Predictor):
    """A trained PDSL network: proposals (cached) -> multi-scale detections -> masks."""

    inference_keys = ("device", "proposals", "test")

    def __init__(self, model: PDSLNet, cfg: PDSLMethodConfig, category_ids: list[int],
                 categories: dict[int, str], workdir: Path) -> None:
        super().__init__(cfg, category_ids, categories, workdir)
        self.model = model.to(self.device).eval()

    def proposal_boxes(self, record: ImageRecord) -> np.ndarray:
        return self.proposals(record).boxes

    def predict(self, record: ImageRecord, image: np.ndarray | None = None) -> Instances:
        image = load_image(record.path) if image is None else image
        found = detect_and_segment(self.model, image, self.proposal_boxes(record), self.cfg.test, self.device)
        labels = self.labels_of(found.classes)
        return Instances(image.shape[:2], boxes=found.boxes, labels=labels, scores=found.scores,
                         masks=mask_ops.encode_many(found.masks))

