"""PRM training that fits a few hundred tagged photos (issue 11): ``model.frozen_backbone``,
``model.class_prior`` and ``calibration`` of :class:`~wsis.methods.prm.config.PRMMethodConfig`.

* ``model.frozen_backbone``: the backbone is frozen (eval-mode BN, no gradient) and its feature maps are
  cached on disk (:mod:`wsis.engine.feature_cache`, keyed by image content, backbone, size, flip);
  only PRM's class layer trains, on the cached maps (:mod:`wsis.cues.frozen_head`), so a long
  schedule costs seconds per epoch instead of a forward + backward of the backbone per image;
  ``schedule`` is then the class layer's.
* ``model.class_prior: imagenet``: the class layer starts from the backbone's ImageNet classifier
  through the COCO -> ImageNet synset table (:mod:`wsis.cues.class_prior`), and weight decay pulls
  it toward that start (frozen) -- a class with one training image keeps what ImageNet knows.
* ``calibration.thresholds: calibrated``: per-class score thresholds chosen on out-of-fold scores of the
  training images (:mod:`wsis.cues.calibration`), stored in ``method.json`` and used at inference
  instead of ``test.class_threshold``.

None of these is in the PRM paper (fine-tuned backbone, random class layer, threshold 0): the paper
configuration (``prm.yaml``) keeps them off.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from wsis.backbones import imagenet_head
from wsis.cues.class_prior import has_prior, init_class_layer, prior_class_weights
from wsis.cues.frozen_head import FrozenFit, HeadConfig, fit_on_cache
from wsis.cues.prm import PRMNet
from wsis.data.torch_data import tag_targets
from wsis.engine.feature_cache import FeatureCache
from wsis.errors import InputError
from wsis.engine.schedule import schedule_length
from wsis.structures import RecordSet

if TYPE_CHECKING:  # the config module imports nothing of this one; the annotation only needs the name
    from wsis.methods.prm.config import PRMMethodConfig


def check(cfg: "PRMMethodConfig") -> None:
    if cfg.calibration.thresholds == "calibrated" and not cfg.model.frozen_backbone:
        raise InputError("config", "calibration.thresholds=calibrated needs model.frozen_backbone=true: calibration "
                         "trains the classifier once per fold, affordable only on cached features")
    if cfg.model.frozen_stages and cfg.model.frozen_backbone:
        raise InputError("config", "model.frozen_stages is for fine-tuning; model.frozen_backbone=true already "
                         "freezes every stage: set one of them")
    if cfg.model.frozen_stages < 0:
        raise InputError("config", f"model.frozen_stages must be >= 0, not {cfg.model.frozen_stages}")
    if cfg.model.class_prior not in ("imagenet", "none"):
        raise InputError("config", f"model.class_prior must be imagenet or none, not {cfg.model.class_prior!r}")
    schedule_length(cfg.schedule)


def apply_prior(model: PRMNet, names: list[str]) -> np.ndarray:
    """Initialise the class layer of a fine-tuned PRM from the ImageNet head; (C,) classes with a prior."""
    return init_class_layer(model.classifier, imagenet_head(model.backbone), names)


def feature_cache(model: PRMNet, cfg: "PRMMethodConfig", workdir: Path) -> FeatureCache:
    """The on-disk cache of ``model``'s frozen backbone: ``data.feature_cache``, else ``workdir/features``."""
    cache_dir = Path(cfg.data.feature_cache) if cfg.data.feature_cache else workdir / "features"
    return FeatureCache(cache_dir, model.backbone, cfg.data.image_size)


def fit_frozen(model: PRMNet, records: RecordSet, category_ids: list[int], cfg: "PRMMethodConfig",
               workdir: Path) -> FrozenFit:
    """Train ``model.classifier`` by ``cfg.schedule`` on cached features of ``records`` (both flips);
    returns the fit (thresholds calibrated when ``calibration.thresholds == 'calibrated'``)."""
    cache = feature_cache(model, cfg, workdir)
    feats = torch.stack([cache.get(r.path, False) for r in records])
    flipped = torch.stack([cache.get(r.path, True) for r in records]) if cfg.data.hflip else feats
    targets = tag_targets(records.records, category_ids).float()
    return fit_frozen_features(model, feats, flipped, targets, [records.categories[c] for c in category_ids], cfg)


def fit_frozen_features(model: PRMNet, feats: torch.Tensor, flipped: torch.Tensor, targets: torch.Tensor,
                        names: list[str], cfg: "PRMMethodConfig") -> FrozenFit:
    """:func:`fit_frozen` on given frozen-backbone features (N, F, h, w) of the images and of their
    mirror images, with (N, C) tag targets of the classes ``names`` (MSER's later stages train on
    features of erased images). ``cfg`` needs PRM's ``model``, ``schedule``, ``calibration`` and
    ``test.class_threshold`` sections."""
    prior = prior_class_weights(imagenet_head(model.backbone), names) if cfg.model.class_prior == "imagenet" else None
    s = cfg.schedule
    head_cfg = HeadConfig(epochs=s.epochs or 0, iterations=s.iterations, batch_size=s.batch_size, lr=s.lr,
                          momentum=s.momentum, weight_decay=s.weight_decay, seed=cfg.seed,
                          warmup_iterations=s.warmup_iterations, lr_steps=list(s.lr_steps), grad_clip=s.grad_clip)
    calibration = cfg.calibration
    result = fit_on_cache(feats, flipped, targets, head_cfg, prior,
                          has_prior(names) if prior is not None else None,
                          folds=calibration.folds if calibration.thresholds == "calibrated" else 0,
                          min_positives=calibration.min_positives, default_threshold=cfg.test.class_threshold,
                          train_sub_pixel_factor=cfg.model.train_sub_pixel_factor,
                          sub_pixel_factor=cfg.model.sub_pixel_factor, win_size=cfg.model.win_size,
                          peak_filter=cfg.model.peak_filter)
    model.classifier.load_state_dict(result.layer.state_dict())
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    return result
