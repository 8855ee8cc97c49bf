"""PRM (Zhou et al., CVPR 2018) as a method: train a peak-stimulated classifier on image tags, then
for each image back-propagate its class peaks into peak response maps and retrieve, for each peak,
the proposal that best fits its PRM.

Where each part of the paper is (one hop from here):

* the classifier and peak stimulation (Eqs. 1-2, the class score as the mean at the peaks):
  :mod:`wsis.cues.prm`; which peaks are kept: :mod:`wsis.cues.peaks`;
* peak backpropagation into peak response maps (Section 3.3): :mod:`wsis.cues.peak_backprop`;
* proposal retrieval (Eq. 10's score: PRM mass inside, on the contour, background penalty) and
  instance NMS: :mod:`wsis.proposals.retrieval`; proposals: :mod:`wsis.proposals`.

Inference, per image (the reference's ``PeakResponseMapping.forward`` + ``instance_seg``):
1. the image is resized to ``data.image_size`` squared (as in training) and its upsampled CRMs computed;
   with ``test.image_size`` (not in the paper) the class scores are still taken there, and the CRMs
   of steps 2-4 at that size (:meth:`PRMPredictor.localisation_size`);
2. peaks of classes whose score (a logit) is >= ``test.class_threshold`` with a CRM value
   above ``test.peak_threshold`` are kept (at most ``test.max_peaks_per_class`` per class, highest first) and all
   their PRMs computed in one batched backward pass;
3. proposals are generated for the original image (cached on disk by image content), resized
   (nearest) to the PRM resolution for scoring, and each peak retrieves its best proposal;
4. the kept instance's mask is the chosen proposal at the original resolution, its label the
   peak's class and its score the retrieval score;
5. optionally (``test.fill.per_class``, not in the paper) each class that kept a peak adds proposals
   that outline blobs of its class map, scored below every peak instance: :mod:`wsis.proposals.fill`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsis import masks as mask_ops
from wsis.backbones import create_backbone
from wsis.config import load_config, to_dict
from wsis.cues.peak_backprop import peak_response_maps
from wsis.cues.peaks import scores_and_peaks, select_peaks
from wsis.cues.prm import PRMNet, prm_loss, prm_optimizer
from wsis.data.images import load_image
from wsis.data.torch_data import TagDataset, resize_square
from wsis.engine import Trainer, pick_device
from wsis.engine.schedule import schedule_hooks, schedule_length
from wsis.errors import InputError
from wsis.methods.base import Predictor, register
from wsis.methods.prm.config import (CalibrationConfig, PRMDataConfig, PRMFeatureDataConfig, PRMMethodConfig,
                                     PRMModelConfig, PRMNetConfig, PRMScheduleConfig, PRMTestConfig)
from wsis.methods.prm.frozen import apply_prior, check, fit_frozen
from wsis.methods.prm.staged import staged_training
from wsis.methods.trained import MODEL_FILE, load_weights, read_trained, save_trained, trained_categories
from wsis.proposals.fill import with_fill
from wsis.proposals.retrieval import retrieve
from wsis.structures import ImageRecord, Instances, RecordSet

__all__ = ["CalibrationConfig", "PRMDataConfig", "PRMFeatureDataConfig", "PRMMethodConfig", "PRMModelConfig",
           "PRMNetConfig", "PRMPredictor", "PRMScheduleConfig", "PRMTestConfig", "build_model", "fit", "load",
           "migrate_config", "train_finetuned"]

# retrieval keys before PRM's and SGPO's scoring shared one config
RENAMED_SCORING_KEYS = {"balance_factor": "alpha", "penalty_factor": "gamma", "penalty_reference_area": "gamma_reference_area"}


def migrate_config(config: dict) -> dict:
    """A ``method.json`` config written before the classifier section was renamed (``prm`` ->
    ``classifier``; its ``peak_threshold`` was never read and is dropped), before the scoring keys
    took SGPO's names (:data:`RENAMED_SCORING_KEYS`), and before the skeleton (``MOVED_KEYS``, applied
    by :func:`wsis.methods.trained.read_trained`): of the two old schedules the one the run trained by
    becomes ``schedule`` (the class layer's ``fit.head_*`` with a frozen backbone, else ``classifier``'s)."""
    config = dict(config)
    if "prm" in config and "classifier" not in config:
        config["classifier"] = {k: v for k, v in config.pop("prm").items() if k != "peak_threshold"}
    if isinstance(config.get("retrieval"), dict):
        config["retrieval"] = {RENAMED_SCORING_KEYS.get(k, k): v for k, v in config["retrieval"].items()}
    fit, classifier = config.get("fit"), config.get("classifier")
    if isinstance(fit, dict) and isinstance(classifier, dict):
        if fit.get("frozen_backbone"):  # the backbone's epochs and lr were not used
            config["classifier"] = {k: v for k, v in classifier.items() if k not in ("epochs", "lr")}
        else:  # the class layer's were not
            config["fit"] = {k: v for k, v in fit.items() if k not in ("head_epochs", "head_lr")}
    return config


def build_model(cfg: PRMNetConfig, num_classes: int, pretrained: bool | str | None = None) -> PRMNet:
    """The classifier of a ``model`` section (its backbone with ``cfg.pretrained`` weights unless given)."""
    backbone = create_backbone(cfg.backbone, cfg.pretrained if pretrained is None else pretrained)
    return PRMNet(backbone, num_classes, sub_pixel_factor=cfg.sub_pixel_factor, win_size=cfg.win_size,
                  peak_filter=cfg.peak_filter)


def train_finetuned(model: PRMNet, dataset: TagDataset, schedule: PRMScheduleConfig, workdir: Path,
                    meta: dict[str, Any], *, device: str, seed: int, num_workers: int,
                    frozen_stages: int = 0, feature_cache: Path | None = None) -> None:
    """The reference's training: every layer by SGD on the peak-stimulated multi-label loss, the
    backbone at ``backbone_lr_mult`` x the rate; resumes from ``workdir``. With ``frozen_stages`` the
    stem and that many backbone stages stay frozen and their output is cached in ``feature_cache``
    (:mod:`wsis.methods.prm.staged`)."""
    def step(net: torch.nn.Module, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        return prm_loss(net(inputs), targets)

    net, data = model, dataset
    if frozen_stages:
        net, data = staged_training(model, dataset, frozen_stages, feature_cache or workdir / "features",
                                    device=pick_device(device))
    optimizer = prm_optimizer(model, schedule.lr, schedule.backbone_lr_mult, schedule.momentum, schedule.weight_decay)
    Trainer(net, optimizer, step_fn=step, workdir=workdir, **schedule_length(schedule),
            hooks=schedule_hooks(schedule, optimizer), device=device, seed=seed, batch_size=schedule.batch_size,
            num_workers=num_workers, config=meta).fit(data)


def fit(records: RecordSet, config: str | Path | None = None, overrides: Sequence[str] = (),
        workdir: str | Path = "runs/prm") -> "PRMPredictor":
    """Train the PRM classifier on the records' tags; resumes from ``workdir`` when interrupted."""
    cfg = load_config(PRMMethodConfig, config, list(overrides))
    workdir = Path(workdir)
    category_ids = sorted(records.categories)
    if not any(r.tags for r in records):
        raise InputError(records.name or "dataset", "no image has tags: PRM trains on image-level labels")
    check(cfg)
    cfg.test.fill.check()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(category_ids))
    names = [records.categories[c] for c in category_ids]
    meta = {"method": "prm", "config": to_dict(cfg), "category_ids": category_ids,
            "categories": {str(k): v for k, v in records.categories.items()}}
    started = time.perf_counter()
    if cfg.model.frozen_backbone:
        result = fit_frozen(model, records, category_ids, cfg, workdir)
        meta["class_thresholds"] = [float(t) for t in result.thresholds]
        meta["calibration"] = result.calibration
        meta["head_losses"] = [result.losses[0], result.losses[-1]]
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        if cfg.model.class_prior == "imagenet":
            apply_prior(model, names)
        dataset = TagDataset(records.records, category_ids, image_size=cfg.data.image_size,
                             train=cfg.data.hflip, normalize=model.backbone.normalize, seed=cfg.seed)
        train_finetuned(model, dataset, cfg.schedule, workdir, meta, device=cfg.device, seed=cfg.seed,
                        num_workers=cfg.num_workers, frozen_stages=cfg.model.frozen_stages,
                        feature_cache=Path(cfg.data.feature_cache) if cfg.data.feature_cache else None)
    save_trained(workdir, model, meta, started)
    return PRMPredictor(model, cfg, category_ids, records.categories, workdir, meta.get("class_thresholds"))


def load(workdir: str | Path, overrides: Sequence[str] = ()) -> "PRMPredictor":
    workdir = Path(workdir)
    meta, cfg = read_trained(workdir, PRMMethodConfig, migrate_config, overrides)
    category_ids, categories = trained_categories(meta)
    model = build_model(cfg.model, len(category_ids), pretrained=False)
    load_weights(model, workdir / MODEL_FILE)
    thresholds = meta.get("class_thresholds")
    if thresholds is not None and any(o.split("=", 1)[0].strip() == "test.class_threshold" for o in overrides):
        # an explicit threshold is the user's choice: it replaces the calibrated ones rather than being ignored
        print(f"test.class_threshold given: it replaces the {len(thresholds)} per-class thresholds "
              "calibrated on the training images")
        thresholds = None
    cfg.test.fill.check()
    return PRMPredictor(model, cfg, category_ids, categories, workdir, thresholds)


@register("prm", PRMMethodConfig)
class PRMPredictor(Predictor):
    """A trained PRM classifier plus the retrieval stage."""

    inference_keys = ("device", "proposals", "test")

    def __init__(self, model: PRMNet, cfg: PRMMethodConfig, category_ids: list[int],
                 categories: dict[int, str], workdir: Path, thresholds: Sequence[float] | None = None) -> None:
        super().__init__(cfg, category_ids, categories, workdir)
        self.model = model.to(self.device).eval()
        # per-class thresholds calibrated on training images (calibration.thresholds=calibrated), else the test one
        self._thresholds = None if thresholds is None else torch.tensor(list(thresholds), dtype=torch.float32)
        self.top_scores: dict[int, tuple[float, int] | None] = {}  # image id -> (top class score, channel)
        self._last_top: tuple[float, int] | None = None

    def class_thresholds(self) -> torch.Tensor:
        """(C,) score each class must reach in an image for its peaks to be kept."""
        if self._thresholds is not None:
            return self._thresholds
        return torch.full((len(self.category_ids),), float(self.cfg.test.class_threshold))

    # -- stages ------------------------------------------------------------------------------
    def localisation_size(self) -> int:
        """Side of the square input the peaks, PRMs and retrieval are computed at."""
        return self.cfg.test.image_size or self.cfg.data.image_size

    def prepare(self, image: np.ndarray, size: int | None = None) -> torch.Tensor:
        """(H, W, 3) uint8 -> normalised (1, 3, S, S) tensor, S = ``size`` or the localisation size
        (the training resolution unless ``test.image_size`` is set)."""
        x = resize_square(image, size or self.localisation_size())
        return self.model.backbone.normalize(x[None]).to(self.device)

    @torch.no_grad()
    def training_size_scores(self, image: np.ndarray) -> torch.Tensor:
        """(C,) peak-stimulation class scores of the image at ``data.image_size``, where the thresholds
        were calibrated."""
        crm = self.model.crm(self.prepare(image, self.cfg.data.image_size))
        return scores_and_peaks(self.model, crm)[0][0]

    @torch.no_grad()
    def class_decision(self, image: np.ndarray) -> torch.Tensor | None:
        """(C,) bool: the classes that pass their thresholds, scored at the training resolution; None
        when the localisation runs at that resolution too (the peak stage then decides on its own CRM)."""
        if self.localisation_size() == self.cfg.data.image_size:
            return None
        scores = self.training_size_scores(image)
        self._last_top = (float(scores.max()), int(scores.argmax())) if len(scores) else None
        return scores >= self.class_thresholds().to(scores.device)

    def peak_responses(self, x: torch.Tensor, allowed: torch.Tensor | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Peaks' classes (K,), their PRMs (K, S, S) and the class maps (C, S, S) of one image;
        only the maps of the peaks' classes are computed (retrieval reads no other), the rest are 0.
        ``allowed`` (from :meth:`class_decision`) replaces the class test on ``x``'s own scores."""
        batched = self.cfg.test.peak_backprop == "batched" or (
            self.cfg.test.peak_backprop == "auto" and self.device.type == "cuda")
        peaks, prms, crm = peak_response_maps(self.model, x, select=lambda c: self._select_peaks(c, allowed),
                                              batched=batched)
        size = tuple(x.shape[-2:])
        used = torch.unique(peaks[:, 1])
        class_maps = np.zeros((len(crm),) + size, np.float32)
        if len(used):
            up = F.interpolate(crm[used][None], size=size, mode="bicubic", align_corners=False)[0]
            class_maps[used.cpu().numpy()] = up.cpu().numpy()
        return peaks[:, 1].cpu().numpy(), prms.cpu().numpy(), class_maps

    def _select_peaks(self, crm: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Peaks of an upsampled CRM (1, C, h, w) by the rule of the module docstring, step 2 (with the
        calibrated per-class thresholds when the run has them, unless the classes were decided
        already: ``allowed``); the image's top class score is kept for :meth:`why_empty`."""
        scores, peaks, values = scores_and_peaks(self.model, crm)
        if allowed is None:
            scores = scores[0]
            self._last_top = (float(scores.max()), int(scores.argmax())) if len(scores) else None
            allowed = scores >= self.class_thresholds().to(scores.device)
        return select_peaks(peaks, values, allowed, self.cfg.test.peak_threshold, self.cfg.test.max_peaks_per_class,
                            relative=self.cfg.test.peak_relative_threshold)

    def why_empty(self, image_ids: Sequence[int]) -> str:
        """The top class score over the images against ``test.class_threshold``."""
        tops = [self.top_scores[i] for i in image_ids if self.top_scores.get(i) is not None]
        if not tops:
            return super().why_empty(image_ids)
        score, channel = max(tops)
        threshold = self.cfg.test.class_threshold
        name = self.categories.get(self.category_ids[channel], str(self.category_ids[channel]))
        if score < threshold:
            return (f"every class score is below test.class_threshold={threshold:g} (highest {score:.2f}, "
                    f"{name}); predict with test.class_threshold={np.floor(score * 10) / 10:g}, or train longer "
                    f"(--config small for a few images)")
        return (f"classes scored up to {score:.2f} ({name}, threshold {threshold:g}) but no proposal was retrieved "
                f"for their peaks (test.peak_threshold={self.cfg.test.peak_threshold:g}, retrieval settings)")

    # -- prediction --------------------------------------------------------------------------
    def predict(self, record: ImageRecord, image: np.ndarray | None = None) -> Instances:
        image = load_image(record.path) if image is None else image
        h, w = image.shape[:2]
        x = self.prepare(image)
        classes, prms, class_maps = self.peak_responses(x, self.class_decision(image))
        self.top_scores[record.image_id] = self._last_top
        props = self.proposals(record)
        if len(classes) == 0 or len(props) == 0 or props.masks is None:
            return Instances((h, w), masks=[])
        s = x.shape[-1]
        small = mask_ops.decode_resized(props.masks, props.image_size, s, s)
        test = self.cfg.test
        found = retrieve(prms, classes, class_maps, small, test.retrieval)
        index, picked, scores = with_fill(found.proposal_index, found.peak_classes, found.scores, classes,
                                          class_maps, small, test.fill, test.retrieval.size_limit)
        chosen = [props.masks[i] for i in index]
        return Instances((h, w), boxes=mask_ops.to_bbox(chosen), labels=self.labels_of(picked), scores=scores,
                         masks=chosen)

