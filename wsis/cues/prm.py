"""PRM classifier (Zhou et al., "Weakly supervised instance segmentation using class peak response",
CVPR 2018): a fully convolutional backbone, a 1x1 conv to class response maps (CRMs) and peak
stimulation, following the reference implementation (ZhouYanzhao/PRM).

Peak stimulation, as the reference code does it:

* the CRMs are upsampled bilinearly by ``sub_pixel_factor`` (``align_corners=True``) before peaks
  are searched ("sub-pixel locating");
* a peak is a pixel that is the maximum of its ``win_size`` x ``win_size`` window (the map padded
  with -inf). Ties follow the reference's ``max_pool2d`` index test: a pixel is a peak only if its
  window's arg-max *is* that pixel, and the arg-max is the first maximum in row-major order, so a
  flat plateau yields one peak (its first pixel) and not every pixel of it;
* peaks below the per-channel filter value (the lower median by default, ``torch.median``) are
  dropped; a channel always keeps its global maximum, so no mean divides by zero;
* the class score is the mean of the CRM at the peaks; the backward pass puts the upstream
  gradient on every peak *without* the 1/N of the mean (the reference's ``PeakStimulation.backward``;
  the paper's equation has 1/N). We keep the code's rule because the learning rates of its config
  were tuned with it.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

PeakFilter = Literal["median", "mean", "max", "none"]


def filter_values(crm: torch.Tensor, kind: PeakFilter) -> torch.Tensor | None:
    """Per-(image, class) threshold of a (B, C, H, W) map, shaped (B, C, 1, 1); None for "none"."""
    flat = crm.flatten(2)
    if kind == "median":
        value = flat.median(dim=2).values  # lower median for an even count, as the reference
    elif kind == "mean":
        value = flat.mean(dim=2)
    elif kind == "max":
        value = flat.amax(dim=2)
    elif kind == "none":
        return None
    else:
        raise ValueError(f"unknown peak filter {kind!r}; expected median, mean, max or none")
    return value[..., None, None]


def peak_mask(crm: torch.Tensor, win_size: int = 3, peak_filter: PeakFilter = "median") -> torch.Tensor:
    """Boolean (B, C, H, W) map of the peaks of ``crm`` (see the module docstring for the rules).

    The reference's test -- the window's first arg-max in row-major order is the pixel itself -- is
    computed as comparisons with the shifted map: a pixel must be strictly greater than the window
    pixels before it in row-major order (the rows above, and to its left) and >= those after it.
    Same answer as ``max_pool2d(..., return_indices=True)``, about twice as fast on a CPU.
    """
    if win_size < 1 or win_size % 2 != 1:
        raise ValueError(f"win_size must be a positive odd number, got {win_size}")
    crm = crm.detach()
    h, w = crm.shape[-2:]
    off = win_size // 2
    padded = F.pad(crm, (off, off, off, off), value=float("-inf"))
    peaks = torch.ones_like(crm, dtype=torch.bool)
    for dy in range(-off, off + 1):
        for dx in range(-off, off + 1):
            if dy == 0 and dx == 0:
                continue
            neighbour = padded[..., off + dy:off + dy + h, off + dx:off + dx + w]
            peaks &= (crm > neighbour) if (dy < 0 or (dy == 0 and dx < 0)) else (crm >= neighbour)
    threshold = filter_values(crm, peak_filter)
    if threshold is not None:
        peaks &= crm >= threshold
    return peaks


def find_peaks(crm: torch.Tensor, win_size: int = 3,
               peak_filter: PeakFilter = "median") -> tuple[torch.Tensor, torch.Tensor]:
    """Peaks of a (B, C, H, W) map: ``(peaks (K, 4) int64 [batch, class, y, x], values (K,))``,
    in row-major order of (batch, class, y, x)."""
    peaks = peak_mask(crm, win_size, peak_filter).nonzero()
    values = crm.detach()[peaks[:, 0], peaks[:, 1], peaks[:, 2], peaks[:, 3]]
    return peaks, values


def peak_mean(crm: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
    """(B, C) mean of a (B, C, H, W) map at its peaks (``peaks``: the 0/1 mask in the map's dtype)."""
    return (crm * peaks).sum(dim=(2, 3)) / peaks.sum(dim=(2, 3))


class _PeakMean(torch.autograd.Function):
    """Mean of the map at the peaks; backward puts the upstream gradient on each peak (reference)."""

    @staticmethod
    def forward(crm: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
        return peak_mean(crm, peaks)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        peaks, = ctx.saved_tensors
        return peaks * grad[..., None, None], None


def peak_stimulation(crm: torch.Tensor, win_size: int = 3, peak_filter: PeakFilter = "median") -> torch.Tensor:
    """Class scores (B, C): mean of the (upsampled) CRM at its peaks; gradient only at the peaks."""
    peaks = peak_mask(crm, win_size, peak_filter).to(crm.dtype)
    return _PeakMean.apply(crm, peaks)


def prm_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss of (B, C) scores against (B, C) 0/1 targets (the reference's)."""
    return F.multilabel_soft_margin_loss(scores, targets.to(scores.dtype))


class PRMNet(nn.Module):
    """Backbone -> 1x1 conv to ``num_classes`` class response maps -> peak stimulation.

    ``backbone`` maps (B, 3, H, W) to (B, out_channels, H/stride, W/stride) and has the attributes
    ``out_channels`` and ``stride``. Class index ``c`` is the c-th output channel; mapping it to a
    dataset's category id is the caller's job.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, sub_pixel_factor: int = 8,
                 win_size: int = 3, peak_filter: PeakFilter = "median") -> None:
        super().__init__()
        if sub_pixel_factor < 1:
            raise ValueError(f"sub_pixel_factor must be >= 1, got {sub_pixel_factor}")
        filter_values(torch.zeros(1, 1, 1, 1), peak_filter)  # reject an unknown filter name now
        self.backbone = backbone
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, kernel_size=1, bias=True)
        self.num_classes = num_classes
        self.sub_pixel_factor = sub_pixel_factor
        self.win_size = win_size
        self.peak_filter = peak_filter

    @property
    def stride(self) -> float:
        """Image pixels per pixel of :meth:`crm` (approximately; align_corners upsampling)."""
        return self.backbone.stride / self.sub_pixel_factor

    def raw_crm(self, images: torch.Tensor) -> torch.Tensor:
        """Class response maps at the backbone's resolution, (B, C, H/stride, W/stride)."""
        return self.classifier(self.backbone(images))

    def crm(self, images: torch.Tensor) -> torch.Tensor:
        """Class response maps upsampled by ``sub_pixel_factor`` (where peaks are searched)."""
        return self.crm_from_features(self.backbone(images))

    def crm_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`crm` of the backbone's output ``features`` (training on a partly frozen backbone
        runs the backbone's trainable part itself)."""
        maps = self.classifier(features)
        if self.sub_pixel_factor > 1:
            maps = F.interpolate(maps, scale_factor=self.sub_pixel_factor, mode="bilinear", align_corners=True)
        return maps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores (B, C) by peak stimulation."""
        return peak_stimulation(self.crm(images), self.win_size, self.peak_filter)

    def find_peaks(self, crm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Peaks of an upsampled CRM: ``(peaks (K, 4) [batch, class, y, x], values (K,))``."""
        return find_peaks(crm, self.win_size, self.peak_filter)

    def param_groups(self, lr: float, backbone_lr_mult: float = 0.01) -> list[dict]:
        """Optimizer groups of the reference schedule: the head at ``lr``, the backbone at
        ``lr * backbone_lr_mult``."""
        return [
            {"params": [p for p in self.classifier.parameters() if p.requires_grad], "lr": lr},
            {"params": [p for p in self.backbone.parameters() if p.requires_grad], "lr": lr * backbone_lr_mult},
        ]


def prm_optimizer(model: PRMNet, lr: float, backbone_lr_mult: float, momentum: float,
                  weight_decay: float) -> torch.optim.SGD:
    """SGD with per-group learning rates: the class layer at ``lr``, the backbone at ``lr * backbone_lr_mult``
    (the reference: 0.01 and 0.01x, momentum 0.9, weight decay 1e-4)."""
    return torch.optim.SGD(model.param_groups(lr, backbone_lr_mult), lr=lr, momentum=momentum,
                           weight_decay=weight_decay)

