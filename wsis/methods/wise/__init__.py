"""WISE (Issam Laradji et al., "Where are the Masks: Instance Segmentation with Image-level
Supervision", BMVC 2019; Algorithm 1): a PRM classifier trained on the image tags locates objects
by its peaks; for each peak a proposal containing it is sampled with probability proportional to
objectness (Eq. 1) as its pseudo mask (:mod:`wsis.methods.wise.pseudo_labels`); Mask R-CNN trains on the pseudo
masks (Eq. 2), which are drawn afresh every epoch; at test time only Mask R-CNN runs, optionally
followed by swapping each mask for the proposal of highest IoU (``test.refine``).

Where each part is (one hop from here): the PRM classifier (stage 1): :mod:`wsis.methods.prm` (and
:mod:`wsis.cues.prm`); peaks kept per tagged class: :mod:`wsis.cues.peaks`; Eq. 1 (candidates and
the objectness-proportional draw): :mod:`wsis.methods.wise.pseudo_labels`; Eq. 2 (Mask R-CNN's loss
on the pseudo masks): :mod:`wsis.detectors.maskrcnn`, trained by :mod:`wsis.detectors.training`;
the test-time refinement of Fig. 3: :mod:`wsis.detectors.refine`.

Workdir: ``prm/`` (the PRM stage, :func:`wsis.methods.prm.fit`; reused when finished),
``proposals/`` (cached proposals, also used by the refinement), ``pseudo/`` (per-image candidate
sets), ``pseudo_labels.json`` (the epoch-0 draw as COCO json), then ``last.pt``, ``model.pt`` and
``method.json`` of the detector.

Differences from the paper, and why:

* Algorithm 1 draws a new proposal for an image each time it is sampled; here the draw is fixed per
  (epoch, image) -- the same thing when every image is seen once per epoch, and reproducible and
  resumable.
* The paper used MCG proposals (objectness = MCG's score); the default here is the toolkit's
  superpixel-hierarchy proposals with their objectness; precomputed MCG/COB files can be named in
  ``proposals`` (see :mod:`wsis.proposals.precomputed`).
* Only the peaks of an image's tagged classes are used (the tags are known on training images).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from wsis.config import load_config, to_dict
from wsis.data.images import atomic_write
from wsis.errors import InputError
from wsis.methods import prm as prm_method
from wsis.methods.base import register
from wsis.methods.maskrcnn import DetectorPredictor, MaskRCNNMethodConfig, fit_detector, load_detector
from wsis.methods.prm import migrate_config as migrate_prm_config
from wsis.methods.prm.config import MOVED_KEYS as PRM_MOVED_KEYS
from wsis.methods.prm.config import PRMFeatureDataConfig, PRMModelConfig, PRMScheduleConfig
from wsis.methods.trained import META_FILE
from wsis.methods.wise.pseudo_labels import (PeakCandidates, PseudoLabelConfig, PseudoLabeler, pseudo_instances,
                                             write_pseudo_labels)
from wsis.structures import ImageRecord, Instances, RecordSet

PRM_DIR = "prm"
PSEUDO_DIR = "pseudo"
PSEUDO_JSON = "pseudo_labels.json"


@dataclass
class WisePRMConfig:
    """Stage 1, PRM's classifier (network, data, schedule); its device, seed, workers and proposals are
    WISE's, its peaks are ``pseudo``'s."""

    # PRM's model / data options include its photo recipe (model.frozen_backbone with
    # data.feature_cache, model.class_prior; wsis.methods.prm.frozen): off by default, as in the paper.
    # PRM's calibration of class thresholds is not offered: WISE keeps the peaks of the tagged classes.
    model: PRMModelConfig = field(default_factory=PRMModelConfig)
    data: PRMFeatureDataConfig = field(default_factory=PRMFeatureDataConfig)
    schedule: PRMScheduleConfig = field(default_factory=PRMScheduleConfig)


@dataclass
class WiseMethodConfig(MaskRCNNMethodConfig):
    prm: WisePRMConfig = field(default_factory=WisePRMConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)


WiseMethodConfig.MOVED_KEYS = {  # type: ignore[attr-defined]  # the layout before the skeleton (wsis.config)
    **MaskRCNNMethodConfig.MOVED_KEYS,  # type: ignore[attr-defined]
    **{f"prm.{old}": f"prm.{new}" for old, new in PRM_MOVED_KEYS.items()
       if new.split(".")[0] in ("model", "data", "schedule")}}


def migrate_config(config: dict) -> dict:
    """A ``method.json`` config written before the ``prm`` section held only the classifier (it had
    all of PRM's method config, ``prm.prm.epochs``; the rest was never read by WISE and is dropped),
    and before the skeleton (the PRM stage's class threshold and its calibration were never read:
    the pseudo labels use the tags; ``prm.fit``'s other keys move with PRM's ``MOVED_KEYS``)."""
    config = dict(config)
    if isinstance(config.get("prm"), dict):
        old = migrate_prm_config(config["prm"])
        prm = {k: old[k] for k in ("backbone", "pretrained", "classifier", "fit", "model", "data", "schedule") if k in old}
        if isinstance(prm.get("classifier"), dict):
            prm["classifier"] = {k: v for k, v in prm["classifier"].items() if k != "class_threshold"}
        if isinstance(prm.get("fit"), dict):  # PRM's threshold calibration: WISE never read it
            prm["fit"] = {k: v for k, v in prm["fit"].items()
                          if k not in ("thresholds", "calibration_folds", "min_positives")}
        config["prm"] = prm
    return config


def prm_stage_config(cfg: WiseMethodConfig) -> dict:
    """The PRM method config of stage 1 (``workdir/prm/config.yaml``)."""
    return {**to_dict(cfg.prm), "device": cfg.device, "seed": cfg.seed, "num_workers": cfg.num_workers,
            "proposals": to_dict(cfg.proposals),
            "test": {"peak_threshold": cfg.pseudo.peak_threshold, "max_peaks_per_class": cfg.pseudo.max_peaks_per_class}}


@register("wise", WiseMethodConfig)
class WisePredictor(DetectorPredictor):
    """Mask R-CNN trained on WISE's pseudo masks."""


class PseudoTargets:
    """``(record, epoch) -> Instances``: the pseudo masks an image trains on in an epoch."""

    def __init__(self, candidates: dict[int, PeakCandidates], resample: bool, seed: int,
                 cfg: PseudoLabelConfig | None = None) -> None:
        self.candidates, self.resample, self.seed, self.cfg = candidates, resample, seed, cfg

    def __call__(self, record: ImageRecord, epoch: int) -> Instances:
        mode = "sample" if self.resample else "argmax"
        return pseudo_instances(self.candidates[record.image_id], mode, self.seed, epoch, self.cfg)


def fit_prm_stage(records: RecordSet, cfg: WiseMethodConfig, workdir: Path):
    """The trained PRM classifier in ``workdir/prm``: loaded when finished, else trained (or resumed)."""
    prm_dir = workdir / PRM_DIR
    if (prm_dir / META_FILE).is_file():
        return prm_method.load(prm_dir)
    prm_dir.mkdir(parents=True, exist_ok=True)
    config_path = prm_dir / "config.yaml"
    with atomic_write(config_path) as f:
        yaml.safe_dump(prm_stage_config(cfg), f, sort_keys=False)
    return prm_method.fit(records, config_path, [], prm_dir)


def pseudo_labeler(predictor, cfg: WiseMethodConfig, workdir: Path) -> PseudoLabeler:
    return PseudoLabeler(predictor, cfg.proposals.method, cfg.proposals.settings, cfg.proposals.cache(workdir),
                         cfg.pseudo, workdir / PSEUDO_DIR)


def make_candidates(records: RecordSet, cfg: WiseMethodConfig, workdir: Path) -> dict[int, PeakCandidates]:
    """Stages 1-2 of WISE: the PRM classifier, then each training image's candidate sets."""
    if not any(r.tags for r in records):
        raise InputError(records.name or "dataset", "no image has tags: WISE trains on image-level labels")
    predictor = fit_prm_stage(records, cfg, workdir)
    return pseudo_labeler(predictor, cfg, workdir).all_candidates(records)


def fit(records: RecordSet, config: str | Path | None = None, overrides: Sequence[str] = (),
        workdir: str | Path = "runs/wise") -> DetectorPredictor:
    """PRM on the tags, pseudo masks from peaks and proposals, Mask R-CNN on the pseudo masks.
    Every stage resumes from ``workdir`` when interrupted."""
    cfg = load_config(WiseMethodConfig, config, list(overrides))
    workdir = Path(workdir)
    # Ground truth must not leak into training: only the tags are passed on.
    tags_only = RecordSet([ImageRecord(r.image_id, r.path, r.width, r.height, tags=r.tags, file_name=r.file_name)
                           for r in records], dict(records.categories), records.name)
    candidates = make_candidates(tags_only, cfg, workdir)
    write_pseudo_labels(tags_only, candidates, workdir / PSEUDO_JSON, mode="sample", seed=cfg.seed, epoch=0,
                        cfg=cfg.pseudo)
    targets = PseudoTargets(candidates, cfg.pseudo.resample, cfg.seed, cfg.pseudo)
    n = sum(c.num_peaks for c in candidates.values())
    return fit_detector(tags_only, targets, cfg, workdir, WisePredictor,
                        {"signal": "image-level tags", "pseudo_peaks": n})


def load(workdir: str | Path, overrides: Sequence[str] = ()) -> DetectorPredictor:
    return load_detector(workdir, WiseMethodConfig, WisePredictor, migrate_config, overrides)


def pseudo_label(records: RecordSet, config: str | Path | None = None, overrides: Sequence[str] = (),
                 workdir: str | Path = "runs/wise", out: str | Path = "pseudo_labels.json",
                 mode: str = "argmax", epoch: int = 0) -> RecordSet:
    """``wsis pseudo-label``: the PRM stage (trained in ``workdir/prm`` if not yet) and the pseudo
    labels of ``records`` written to ``out`` as COCO json, for any detector to train on:
    ``mode="sample"`` is the draw of ``epoch`` (seeded by ``seed``), ``"argmax"`` each peak's proposal
    of highest objectness. Returns them as records."""
    cfg = load_config(WiseMethodConfig, config, list(overrides))
    candidates = make_candidates(records, cfg, Path(workdir))
    return write_pseudo_labels(records, candidates, out, mode=mode, seed=cfg.seed, epoch=epoch,  # type: ignore[arg-type]
                               cfg=cfg.pseudo)
