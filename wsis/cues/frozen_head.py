"""Training PRM's class layer alone on cached frozen-backbone features.

With the backbone frozen, PRM's classifier is a 1x1 conv on fixed feature maps: its CRMs are
``W * F + b`` per pixel, upsampled by the sub-pixel factor, and the class score is peak stimulation
of them, exactly as in :class:`wsis.cues.prm.PRMNet`. :func:`train_class_layer` fits that layer
with the reference's loss (multi-label soft margin) and optimiser (SGD, momentum 0.9, weight decay),
on feature maps from :class:`wsis.engine.feature_cache.FeatureCache` (each image plain and mirrored),
so long schedules are cheap.

One deviation, for speed: the training loss scores peaks of the CRM at the backbone's resolution
(``train_sub_pixel_factor``, default 1) instead of the x8 upsampled map. On a CPU the upsampled
peak search over 80 classes costs ~3 s per batch of 16 (measured on the shared 2-core machine), ~1
hour for one 20-epoch schedule; at factor 1 a batch costs milliseconds. Bilinear upsampling has no
interior local maxima, so the upsampled map's peaks sit at (or next to) the coarse map's peaks and
the scores are close; inference, and the out-of-fold scores the thresholds are calibrated on, use
the configured factor (x8), i.e. the exact score PRM predicts with.

Optional: ``prior`` = (weight, bias) of an initial layer (:mod:`wsis.cues.class_prior`); the layer
starts there and weight decay pulls it toward the prior instead of toward 0 (``prior_decay``), so a
class seen in one training image keeps what ImageNet knew about it. With ``prior=None`` this is the
reference's random-start layer with plain weight decay.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsis.cues.prm import PeakFilter, peak_stimulation, prm_loss
from wsis.engine.schedule import lr_factor


@dataclass
class HeadConfig:
    epochs: int = 100
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4  # toward 0, or toward the prior when one is given
    seed: int = 0
    # the schedule's other settings (wsis.engine.schedule.ScheduleConfig): a length in iterations
    # instead of epochs (the last epoch cut short), linear warm-up, x0.1 steps, gradient-norm clipping
    iterations: int | None = None
    warmup_iterations: int = 0
    lr_steps: list[int] = field(default_factory=list)
    grad_clip: float | None = None


def class_scores(layer: nn.Conv2d, features: torch.Tensor, sub_pixel_factor: int = 8, win_size: int = 3,
                 peak_filter: PeakFilter = "median") -> torch.Tensor:
    """(B, C) peak-stimulation scores of cached (B, F, h, w) features, as PRMNet.forward computes them."""
    crm = layer(features)
    if sub_pixel_factor > 1:
        crm = F.interpolate(crm, scale_factor=sub_pixel_factor, mode="bilinear", align_corners=True)
    return peak_stimulation(crm, win_size, peak_filter)


def train_class_layer(features: torch.Tensor, targets: torch.Tensor, num_classes: int, cfg: HeadConfig,
                      prior: tuple[torch.Tensor, torch.Tensor] | None = None, *, sub_pixel_factor: int = 8,
                      win_size: int = 3, peak_filter: PeakFilter = "median") -> tuple[nn.Conv2d, list[float]]:
    """Fit a 1x1 class conv on (N, F, h, w) features and (N, C) 0/1 targets. Returns the layer and the
    mean training loss of each epoch."""
    torch.manual_seed(cfg.seed)
    layer = nn.Conv2d(features.shape[1], num_classes, kernel_size=1)
    anchor_w = anchor_b = None
    if prior is not None:
        with torch.no_grad():
            layer.weight.copy_(prior[0].view_as(layer.weight))
            layer.bias.copy_(prior[1])
        anchor_w, anchor_b = layer.weight.detach().clone(), layer.bias.detach().clone()
    # weight decay is applied by hand so that it can pull toward the prior
    opt = torch.optim.SGD(layer.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    targets = targets.float()
    losses: list[float] = []
    steps_per_epoch = -(-len(features) // cfg.batch_size)
    total_steps = cfg.iterations if cfg.iterations is not None else cfg.epochs * steps_per_epoch
    step = 0
    while step < total_steps and len(features):
        order = rng.permutation(len(features))
        order = order[:(total_steps - step) * cfg.batch_size]  # the last epoch cut short
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = torch.from_numpy(order[start:start + cfg.batch_size])
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, cfg.warmup_iterations, cfg.lr_steps)
            loss = prm_loss(class_scores(layer, features[idx], sub_pixel_factor, win_size, peak_filter),
                            targets[idx])
            opt.zero_grad()
            loss.backward()
            with torch.no_grad():
                if anchor_w is None:
                    layer.weight.grad += cfg.weight_decay * layer.weight
                    layer.bias.grad += cfg.weight_decay * layer.bias
                else:
                    layer.weight.grad += cfg.weight_decay * (layer.weight - anchor_w)
                    layer.bias.grad += cfg.weight_decay * (layer.bias - anchor_b)
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(layer.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(order))
    return layer, losses


@dataclass
class FrozenFit:
    """What :func:`fit_on_cache` returns: the layer, per-class thresholds and how they were chosen."""

    layer: nn.Conv2d
    thresholds: np.ndarray  # (C,) on the peak-stimulation score scale
    calibration: dict  # Calibration.to_dict() plus the out-of-fold tag mAP
    losses: list[float]
    prior_classes: np.ndarray  # (C,) bool, classes that started from the ImageNet prior


def fit_on_cache(features: torch.Tensor, flipped: torch.Tensor, targets: torch.Tensor, cfg: HeadConfig,
                 prior: tuple[torch.Tensor, torch.Tensor] | None = None, prior_classes: np.ndarray | None = None,
                 folds: int = 5, min_positives: int = 3, default_threshold: float = 0.0,
                 train_sub_pixel_factor: int = 1, **peak_args) -> FrozenFit:
    """Train the class layer on every training image (plain and mirrored) and calibrate per-class
    thresholds on out-of-fold scores of the plain images (``folds``-fold; 0 keeps ``default_threshold``
    for every class). ``features``/``flipped`` (N, F, h, w), ``targets`` (N, C)."""
    from wsis.cues.calibration import calibrate_thresholds, kfold_indices
    from wsis.eval.tags import tag_map

    n, c = targets.shape
    train_args = peak_args | {"sub_pixel_factor": train_sub_pixel_factor}
    both = torch.cat([features, flipped])
    both_targets = torch.cat([targets, targets])
    layer, losses = train_class_layer(both, both_targets, c, cfg, prior, **train_args)
    if folds and folds >= 2:
        oof = np.zeros((n, c))
        for held in kfold_indices(n, folds, seed=cfg.seed):
            keep = np.setdiff1d(np.arange(n), held)
            rows = torch.from_numpy(np.r_[keep, keep + n])
            fold_layer, _ = train_class_layer(both[rows], both_targets[rows], c, cfg, prior, **train_args)
            with torch.no_grad():
                for i in held:  # one image at a time: the x8 maps of 80 classes are large
                    oof[i] = class_scores(fold_layer, features[i:i + 1], **peak_args)[0].numpy()
        cal = calibrate_thresholds(oof, targets.numpy(), min_positives=min_positives, default=default_threshold)
        report = cal.to_dict() | {"oof_tag_mAP": tag_map(oof, targets.numpy())[0], "folds": folds,
                                  "min_positives": min_positives}
        thresholds = cal.thresholds
    else:
        thresholds = np.full(c, default_threshold)
        report = {"thresholds": thresholds.tolist(), "folds": 0}
    known = np.zeros(c, bool) if prior_classes is None else np.asarray(prior_classes, bool)
    return FrozenFit(layer, thresholds, report, losses, known)
