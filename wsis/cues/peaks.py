"""Which peaks of a class response map become instances: the one rule every method uses.

A peak is kept when its class is *allowed* (inference: the class score is >= a threshold; training:
the image is tagged with it) and its CRM value is > ``threshold``; per class at most
``max_per_class`` are kept, highest value first. With ``keep_strongest`` an allowed class that has
peaks but none above the threshold keeps its strongest one (WISE: the tag says the object is there).
``relative`` (not in the papers; issue 11) also drops the peaks below that fraction of their class's
strongest peak in the image: the CRM of a photo has weak local maxima on context and texture whose
value is a few per cent of the object's peak.
Kept peaks are returned in their original (row-major) order.
"""
from __future__ import annotations

import torch

from wsis.cues.prm import PRMNet, peak_mask, peak_mean


def select_peak_indices(classes: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor,
                        threshold: float | None = None, max_per_class: int | None = None,
                        keep_strongest: bool = False, relative: float | None = None) -> torch.Tensor:
    """Sorted indices of the kept peaks; ``classes`` (K,) channel indices, ``values`` (K,) their CRM
    values, ``allowed`` (C,) bool. ``None`` for ``threshold`` or ``max_per_class``: no such test."""
    classes = classes.long()
    allowed = allowed.to(classes.device)
    ok = allowed[classes] if len(classes) else classes.new_zeros(0, dtype=torch.bool)
    above = ok & (values > threshold) if threshold is not None else ok.clone()
    if keep_strongest:
        for c in torch.unique(classes[ok]).tolist():
            members = torch.nonzero(classes == c).flatten()
            if not above[members].any():
                # the first of the maxima in the original order (a stable descending sort)
                above[members[torch.argsort(values[members], descending=True, stable=True)[0]]] = True
    if relative:
        for c in torch.unique(classes[above]).tolist():
            members = above & (classes == c)
            above &= ~members | (values >= relative * values[members].max())
    idx = torch.nonzero(above).flatten()
    if len(idx) == 0 or max_per_class is None:
        return idx
    # rank of each peak within its class by descending value: sort by (class, -value)
    order = idx[torch.argsort(values[idx], descending=True, stable=True)]
    order = order[torch.argsort(classes[order], stable=True)]
    ranked = classes[order]
    first = torch.searchsorted(ranked, ranked, side="left")
    rank = torch.arange(len(order), device=classes.device) - first
    return order[rank < max_per_class].sort().values


def select_peaks(peaks: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor,
                 threshold: float | None = None, max_per_class: int | None = None,
                 keep_strongest: bool = False, relative: float | None = None) -> torch.Tensor:
    """The kept rows of (K, 4) ``peaks`` [batch, class, y, x] (rule of the module docstring)."""
    return peaks[select_peak_indices(peaks[:, 1], values, allowed, threshold, max_per_class, keep_strongest,
                                     relative)]


@torch.no_grad()
def scores_and_peaks(model: PRMNet, crm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peak-stimulation class scores (B, C) and the peaks (K, 4) with their values (K,) of an
    upsampled CRM, from one peak mask: the same values as ``peak_stimulation`` and
    ``model.find_peaks``, which would each compute the mask (the median filter is a fifth of an
    image's inference without peaks on a CPU)."""
    mask = peak_mask(crm, model.win_size, model.peak_filter)
    scores = peak_mean(crm, mask.to(crm.dtype))
    peaks = mask.nonzero()
    return scores, peaks, crm[peaks[:, 0], peaks[:, 1], peaks[:, 2], peaks[:, 3]]


@torch.no_grad()
def crm_peaks(model: PRMNet, crm: torch.Tensor, allowed: torch.Tensor | None, class_threshold: float | None,
              threshold: float | None, max_per_class: int | None = None, relative: float | None = None
              ) -> torch.Tensor:
    """Kept peaks of one image's upsampled CRM (1, C, h, w): of the ``allowed`` classes, or when None
    of the classes scoring >= ``class_threshold``."""
    scores, peaks, values = scores_and_peaks(model, crm)
    if allowed is None:
        allowed = (scores[0] >= class_threshold if class_threshold is not None
                   else torch.ones(crm.shape[1], dtype=torch.bool, device=crm.device))
    return select_peaks(peaks, values, allowed, threshold, max_per_class, relative=relative)
