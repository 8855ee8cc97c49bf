"""Label-PEnet (Ge et al., "Label-PEnet: Sequential Label Propagation and Enhancement Networks for
Weakly Supervised Instance Segmentation", ``papers/001``): image tags propagated to pixels through
four cascaded modules -- multi-label classification, object detection, instance refinement,
instance segmentation -- each trained on the calibrated outputs of the one before.

Where each part of the paper is:

=========================================  ==========================================================
paper                                      code
=========================================  ==========================================================
3.2 classification module, **Eqs. 1-2**    :func:`wsis.methods.labelpenet.model.classification_scores`,
                                           ``multilabel_loss``, ``ClassificationModule`` (WSDDN's two
                                           streams, :mod:`wsis.detectors.wsddn`)
3.2 proposal calibration, Excitation BP    :mod:`wsis.cues.excitation` (the winner-take-all rule of
                                           :mod:`wsis.cues.peak_backprop`, shared),
                                           :mod:`wsis.methods.labelpenet.calibration` (NMS groups,
                                           A^c, A_0, heat-map, confident map, CRF: :mod:`wsis.cues.crf`)
3.2 detection module, **Eqs. 3-4**         ``weighted_rpn_loss``, ``weighted_rcnn_loss``,
                                           ``WeightedRPN``, ``WeightedRoIHeads`` (model.py)
3.2 refinement / segmentation modules      ``build_rcnn(masks=True)``, ``ASPP`` (model.py); mask
                                           calibration: :func:`~wsis.methods.labelpenet.inference.label_image`
3.3 cascaded pre-training                  :func:`fit` (below), outputs on disk:
                                           :class:`~wsis.methods.labelpenet.data.SupervisionStore`
3.3 forward-backward learning, beta        :mod:`wsis.methods.labelpenet.curriculum`
4.1 network structures                     :mod:`wsis.methods.labelpenet.model`
4.2 scales, flips, schedules               :mod:`wsis.methods.labelpenet.data`, ``config.py``,
                                           ``wsis/configs/labelpenet.yaml``
=========================================  ==========================================================

Training (:func:`fit`) on the tags only (ground truth is stripped first):

1. proposals of every training image (selective search by default), cached by image content;
2. cascaded pre-training, backbone fixed: for each module in forward order, ``<workdir>/<module>/``
   holds its Trainer run (``last.pt``, ``log.jsonl``, exact resume), then its weights
   (``model.pt``; a finished module is not trained again) and, for all but the last, its
   calibrated outputs on every training image (``outputs/<image_id>.npz``; an interrupted
   labelling pass resumes at the first image without a file) -- the next module's supervision;
3. forward-backward learning (``<workdir>/forward_backward/``, its own exact resume), when
   ``schedule.forward_backward.iterations`` > 0;
4. ``model.pt`` + ``method.json`` (:mod:`wsis.methods.trained`).

Prediction uses the module named by ``test.module`` (default: the segmentation module, the paper's
final predictions); the benchmark reads every module's (Table 2's ladder). :func:`export_pseudo_labels`
writes a module's stored supervision as COCO results (``wsis pseudo-label --method labelpenet``).

Differences from the paper (reasons in the module docstrings): EfficientNet-Lite0 at stride 16
instead of VGG-16 (weights absent here), one stride-16 level for every module (the paper's RPN of
the last two modules reads pool4 and its ASPP relu5_3), RoIAlign in the torchvision modules, the
unspecified combinations of calibration chosen and written down (calibration.py), the
forward-backward phase sums all of an iteration's losses into one SGD step.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from wsis import masks as mask_ops
from wsis.config import load_config, to_dict
from wsis.data.images import load_image
from wsis.engine import HookBase, Trainer, pick_device
from wsis.engine.checkpoint import save_checkpoint
from wsis.engine.distributed import is_main
from wsis.engine.schedule import ScheduleConfig, schedule_hooks, schedule_length
from wsis.errors import InputError
from wsis.methods.base import Predictor, register
from wsis.methods.labelpenet.calibration import Candidates
from wsis.methods.labelpenet.config import MODULES, LabelPENetConfig
from wsis.methods.labelpenet.curriculum import PhaseHook, curriculum_losses, phase_of, unfreeze_backbone
from wsis.methods.labelpenet.data import LabelPENetDataset, SupervisionStore, collate, keep_proposals
from wsis.methods.labelpenet.inference import label_image, predict_image
from wsis.methods.labelpenet.model import LabelPENet
from wsis.methods.trained import MODEL_FILE, load_weights, read_trained, save_trained, trained_categories
from wsis.proposals.cache import ProposalCache
from wsis.structures import ImageRecord, Instances, RecordSet

STAGE_MODEL = "model.pt"
OUTPUTS = "outputs"


def tags_only(records: RecordSet) -> RecordSet:
    """The records with their tags and nothing else: ground truth must not reach training."""
    return RecordSet([ImageRecord(r.image_id, r.path, r.width, r.height, tags=r.tags, file_name=r.file_name)
                      for r in records], dict(records.categories), records.name)


def _check(cfg: LabelPENetConfig, source: str) -> None:
    problems = []
    if not cfg.data.scales or any(s < 16 for s in cfg.data.scales):
        problems.append(f"data.scales must be a non-empty list of sizes >= 16, got {cfg.data.scales}")
    for name in (*MODULES, "forward_backward"):
        schedule_length(getattr(cfg.schedule, name), f"schedule.{name}")  # one length, >= 0
    if cfg.test.module not in MODULES:
        problems.append(f"test.module must be one of {list(MODULES)}, got {cfg.test.module!r}")
    if not 0 <= cfg.curriculum.beta < 1:
        problems.append(f"curriculum.beta must be in [0, 1), got {cfg.curriculum.beta}")
    if cfg.calibration.max_instances < 1:
        problems.append(f"calibration.max_instances must be >= 1, got {cfg.calibration.max_instances}")
    if problems:
        raise InputError(source, problems[0])


def _train(net: LabelPENet, params: list[torch.nn.Parameter], dataset: LabelPENetDataset, step,
           sched: ScheduleConfig, cfg: LabelPENetConfig, stage_dir: Path, settings: dict[str, Any],
           extra_hooks: Sequence[HookBase] = ()) -> None:
    """One Trainer run of the schedule (exactly its iterations, or its epochs) over ``params``,
    resumable from ``stage_dir/last.pt``."""
    optimizer = torch.optim.SGD(params, lr=sched.lr, momentum=sched.momentum, weight_decay=sched.weight_decay)
    hooks: list[HookBase] = [*extra_hooks, *schedule_hooks(sched, optimizer)]
    Trainer(net, optimizer, step_fn=step, workdir=stage_dir, hooks=hooks,
            device=cfg.device, seed=cfg.seed, batch_size=sched.batch_size, num_workers=cfg.num_workers,
            collate_fn=collate, config=settings, find_unused_parameters=True,
            **schedule_length(sched, f"schedule.{stage_dir.name}")).fit(dataset)


def _losses(values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    return sum(values.values()), {k: v.detach() for k, v in values.items()}


def _trains(sched: ScheduleConfig, key: str) -> bool:
    return next(iter(schedule_length(sched, key).values())) > 0


def _supervises(cfg: LabelPENetConfig, module: str) -> bool:
    """Whether a module's calibrated instances are needed: some later module, or forward-backward
    learning, trains on them. A run that trains the first modules alone (a module ladder's prefix)
    then skips a labelling pass per module; a later run with longer schedules labels what is missing."""
    later = MODULES[MODULES.index(module) + 1:]
    return bool(later) and (any(_trains(getattr(cfg.schedule, m), f"schedule.{m}") for m in later)
                            or _trains(cfg.schedule.forward_backward, "schedule.forward_backward"))


def label_records(net: LabelPENet, module: str, records: Sequence[ImageRecord], category_ids: list[int],
                  store: SupervisionStore, cfg: LabelPENetConfig, proposal_cache: ProposalCache) -> int:
    """Module ``module``'s calibrated instances of every record without a file in ``store``; returns
    how many were computed now."""
    device = pick_device(cfg.device)
    net.to(device)
    index = {c: i for i, c in enumerate(category_ids)}
    todo = [r for r in records if not store.has(r.image_id)]
    for r in tqdm(todo, desc=f"labelpenet: {module} outputs", unit="img", disable=not is_main() or not todo):
        tags = np.zeros(len(category_ids), bool)
        tags[[index[t] for t in r.tags if t in index]] = True
        proposals = None
        if module == "classification":
            proposals = keep_proposals(cfg.proposals.get(proposal_cache, r.path).boxes, cfg.data.min_proposal_size)
        store.save(r.image_id, label_image(net, module, load_image(r.path), tags, proposals, cfg, device))
    return len(todo)


def fit(records: RecordSet, config: str | Path | None = None, overrides: Sequence[str] = (),
        workdir: str | Path = "runs/labelpenet") -> "LabelPENetPredictor":
    """Cascaded pre-training, then forward-backward learning, on the records' tags; resumes from
    ``workdir`` at any point without recomputing what is on disk."""
    cfg = load_config(LabelPENetConfig, config, list(overrides))
    _check(cfg, str(config) if config else "command line")
    workdir = Path(workdir)
    records = tags_only(records)
    if len(records) == 0 or not any(r.tags for r in records):
        raise InputError(records.name or "dataset", "no image has tags: Label-PEnet trains on image-level labels")
    category_ids = sorted(records.categories)
    proposal_cache = cfg.proposals.cache(workdir)
    started = time.perf_counter()
    proposal_cache.generate_all([r.path for r in records], cfg.proposals.method, workers=1, progress=is_main(),
                                **cfg.proposals.settings)
    torch.manual_seed(cfg.seed)
    net = LabelPENet(cfg.model, len(category_ids))
    meta: dict[str, Any] = {"method": "labelpenet", "config": to_dict(cfg), "category_ids": category_ids,
                            "categories": {str(k): v for k, v in records.categories.items()},
                            "signal": "image-level tags", "modules": {}}
    stores = {m: SupervisionStore(workdir / m / OUTPUTS) for m in MODULES}
    pairs = (cfg.proposals.cache(workdir), cfg.proposals)

    for k, module in enumerate(MODULES):
        stage_dir = workdir / module
        sched: ScheduleConfig = getattr(cfg.schedule, module)
        if (stage_dir / STAGE_MODEL).is_file():
            load_weights(getattr(net, module), stage_dir / STAGE_MODEL)
        else:
            dataset = LabelPENetDataset(records.records, category_ids, cfg.data, cfg.seed, proposals=pairs,
                                        supervision={module: stores[MODULES[k - 1]]} if k else {})
            settings = {"method": "labelpenet", "stage": module, "config": to_dict(cfg), **schedule_length(sched)}

            def step(n: torch.nn.Module, batch: list[dict], module: str = module) -> tuple[torch.Tensor, dict]:
                return _losses(n([{**s, "target": s["targets"].get(module)} for s in batch], module))

            _train(net, net.module_parameters(module), dataset, step, sched, cfg, stage_dir, settings)
            if is_main():
                save_checkpoint(stage_dir / STAGE_MODEL, {"model": getattr(net, module).state_dict()})
        meta["modules"][module] = schedule_length(sched)
        if _supervises(cfg, module):
            meta["modules"][module]["labelled_this_run"] = label_records(
                net, module, records.records, category_ids, stores[module], cfg, proposal_cache)

    fb = cfg.schedule.forward_backward
    fb_length = schedule_length(fb, "schedule.forward_backward")
    if _trains(fb, "schedule.forward_backward"):
        if cfg.model.train_backbone_curriculum:
            unfreeze_backbone(net)
        supervision = {m: stores[MODULES[i - 1]] for i, m in enumerate(MODULES) if i}
        dataset = LabelPENetDataset(records.records, category_ids, cfg.data, cfg.seed, proposals=pairs,
                                    supervision=supervision)
        state = {"step": 0}

        def fb_step(n: torch.nn.Module, batch: list[dict]) -> tuple[torch.Tensor, dict]:
            return _losses(curriculum_losses(n, batch, phase_of(state["step"]), cfg))

        settings = {"method": "labelpenet", "stage": "forward_backward", "config": to_dict(cfg), **fb_length}
        params = [p for p in net.parameters() if p.requires_grad]
        _train(net, params, dataset, fb_step, fb, cfg, workdir / "forward_backward", settings, [PhaseHook(state)])
    meta["forward_backward"] = fb_length
    save_trained(workdir, net, meta, started)
    return LabelPENetPredictor(net, cfg, category_ids, records.categories, workdir)


def load(workdir: str | Path, overrides: Sequence[str] = ()) -> "LabelPENetPredictor":
    workdir = Path(workdir)
    meta, cfg = read_trained(workdir, LabelPENetConfig, overrides=overrides)
    category_ids, categories = trained_categories(meta)
    net = LabelPENet(cfg.model, len(category_ids), pretrained=False)
    load_weights(net, workdir / MODEL_FILE)
    return LabelPENetPredictor(net, cfg, category_ids, categories, workdir)


def as_instances(c: Candidates, labels: np.ndarray, height: int, width: int) -> Instances:
    order = np.argsort(-c.weights, kind="stable")
    return Instances((height, width), boxes=c.boxes[order], labels=labels[order], scores=c.weights[order],
                     masks=mask_ops.encode_many(c.masks[order]))


def export_pseudo_labels(workdir: str | Path, module: str, records: Sequence[ImageRecord],
                         out: str | Path) -> int:
    """Module ``module``'s stored supervision of ``records`` (a finished or running workdir) as
    COCO results at ``out``; returns the number of instances written."""
    from wsis.data.coco import write_coco_results
    from wsis.methods import read_meta

    meta = read_meta(workdir)
    category_ids, categories = trained_categories(meta)
    store = SupervisionStore(Path(workdir) / module / OUTPUTS)
    preds = {}
    for r in records:
        if not store.has(r.image_id):
            raise InputError(store.path(r.image_id), f"no {module} output for image {r.image_id}: not a training image, or "
                             f"no later module trained on the {module} module's outputs in this run")
        c = store.load(r.image_id)
        h, w = c.masks.shape[1:]
        preds[r.image_id] = as_instances(c, np.asarray(category_ids, np.int64)[c.labels], h, w)
    write_coco_results(preds, out, categories=categories)
    return sum(len(p) for p in preds.values())


@register("labelpenet", LabelPENetConfig)
class LabelPENetPredictor(Predictor):
    """A trained Label-PEnet; ``test.module`` names the module that predicts."""

    inference_keys = ("device", "proposals", "test", "crf")

    def __init__(self, net: LabelPENet, cfg: LabelPENetConfig, category_ids: list[int],
                 categories: dict[int, str], workdir: Path) -> None:
        super().__init__(cfg, category_ids, categories, workdir)
        self.net = net.to(self.device).eval()

    def predict(self, record: ImageRecord, image: np.ndarray | None = None, module: str | None = None) -> Instances:
        image = load_image(record.path) if image is None else image
        module = module or self.cfg.test.module
        proposals = None
        if module == "classification":
            proposals = keep_proposals(self.proposals(record).boxes, self.cfg.data.min_proposal_size)
        c = predict_image(self.net, module, image, proposals, self.cfg, self.device)
        h, w = image.shape[:2]
        return as_instances(c, self.labels_of(c.labels), h, w)

    def why_empty(self, image_ids: Sequence[int]) -> str:
        return f"no detection of the {self.cfg.test.module} module scored >= test.score_threshold={self.cfg.test.score_threshold}"
