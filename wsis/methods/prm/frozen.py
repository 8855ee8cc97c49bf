"""PRM training that fits a few hundred tagged photos (issue 11): the options of ``PRMMethodConfig.fit``.

* ``fit.frozen_backbone``: the backbone is frozen (eval-mode BN, no gradient) and its feature maps are
  cached on disk (:mod:`wsis.engine.feature_cache`, keyed by image content, backbone, size, flip);
  only PRM's class layer trains, on the cached maps (:mod:`wsis.cues.frozen_head`), so a long
  schedule costs seconds per epoch instead of a forward + backward of the backbone per image.
* ``fit.class_prior: imagenet``: the class layer starts from the backbone's ImageNet classifier
  through the COCO -> ImageNet synset table (:mod:`wsis.cues.class_prior`), and weight decay pulls
  it toward that start (frozen) -- a class with one training image keeps what ImageNet knows.
* ``fit.thresholds: calibrated``: per-class score thresholds chosen on out-of-fold scores of the
  training images (:mod:`wsis.cues.calibration`), stored in ``method.json`` and used at inference
  instead of ``classifier.class_threshold``.

None of these is in the PRM paper (fine-tuned backbone, random class layer, threshold 0): the paper
configuration (``prm.yaml``) keeps them off.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from wsis.backbones import imagenet_head
from wsis.cues.class_prior import has_prior, init_class_layer, prior_class_weights
from wsis.cues.frozen_head import FrozenFit, HeadConfig, fit_on_cache
from wsis.cues.prm import PRMNet
from wsis.data.torch_data import tag_targets
from wsis.engine.feature_cache import FeatureCache
from wsis.errors import InputError
from wsis.structures import RecordSet


@dataclass
class FitConfig:
    """How the classifier is trained; the defaults are the paper's (fine-tune, no prior, threshold)."""

    frozen_backbone: bool = False
    class_prior: Literal["imagenet", "none"] = "none"
    thresholds: Literal["fixed", "calibrated"] = "fixed"
    # frozen backbone only: the class layer's schedule (the backbone's is classifier.*)
    head_epochs: int = 100
    head_lr: float = 0.01
    train_sub_pixel_factor: int = 1  # peak search of the training loss (wsis.cues.frozen_head)
    feature_cache: str | None = None  # default <workdir>/features
    # calibration: folds of the training images, and the fewest positive images a class needs for
    # its own threshold (rarer classes share a pooled one)
    calibration_folds: int = 5
    min_positives: int = 3


def check(fit: FitConfig) -> None:
    if fit.thresholds == "calibrated" and not fit.frozen_backbone:
        raise InputError("config", "fit.thresholds=calibrated needs fit.frozen_backbone=true: calibration "
                         "trains the classifier once per fold, affordable only on cached features")
    if fit.class_prior not in ("imagenet", "none"):
        raise InputError("config", f"fit.class_prior must be imagenet or none, not {fit.class_prior!r}")


def apply_prior(model: PRMNet, names: list[str]) -> np.ndarray:
    """Initialise the class layer of a fine-tuned PRM from the ImageNet head; (C,) classes with a prior."""
    return init_class_layer(model.classifier, imagenet_head(model.backbone), names)


def fit_frozen(model: PRMNet, records: RecordSet, category_ids: list[int], fit: FitConfig, classifier,
               workdir: Path, seed: int = 0) -> FrozenFit:
    """Train ``model.classifier`` on cached features of ``records`` (both flips); returns the fit
    (thresholds calibrated when ``fit.thresholds == 'calibrated'``)."""
    names = [records.categories[c] for c in category_ids]
    cache_dir = Path(fit.feature_cache) if fit.feature_cache else workdir / "features"
    cache = FeatureCache(cache_dir, model.backbone, classifier.image_size)
    feats = torch.stack([cache.get(r.path, False) for r in records])
    flipped = torch.stack([cache.get(r.path, True) for r in records]) if classifier.hflip else feats
    targets = tag_targets(records.records, category_ids).float()
    prior = prior_class_weights(imagenet_head(model.backbone), names) if fit.class_prior == "imagenet" else None
    head_cfg = HeadConfig(epochs=fit.head_epochs, batch_size=classifier.batch_size, lr=fit.head_lr,
                          momentum=classifier.momentum, weight_decay=classifier.weight_decay, seed=seed)
    result = fit_on_cache(feats, flipped, targets, head_cfg, prior,
                          has_prior(names) if prior is not None else None,
                          folds=fit.calibration_folds if fit.thresholds == "calibrated" else 0,
                          min_positives=fit.min_positives, default_threshold=classifier.class_threshold,
                          train_sub_pixel_factor=fit.train_sub_pixel_factor,
                          sub_pixel_factor=classifier.sub_pixel_factor, win_size=classifier.win_size,
                          peak_filter=classifier.peak_filter)
    model.classifier.load_state_dict(result.layer.state_dict())
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    return result
