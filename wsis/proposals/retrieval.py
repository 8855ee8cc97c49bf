"""Proposal retrieval for peak response maps (PRM, Zhou et al. 2018) and instance NMS.

For every peak (its PRM ``R`` and class ``c``) and every proposal mask ``M``::

    score = alpha * sum(R in M) + beta * sum(R on contour(M)) - gamma * sum(background_c in M)

with ``contour`` the morphological gradient of width 5 and ``background_c`` the pixels whose class
response is below ``f`` times its mean (the reference's ``balance_factor`` is alpha, its contour
weight beta is 1, its ``penalty_factor`` is gamma). Proposals covering more than 85% or less than 0.002% of the
image are skipped; each peak keeps its best proposal. Instances are then sorted by score and
suppressed at mask IoU 0.3, the PRMs of suppressed instances being added to the kept one (the
reference's ``instance_nms``, which ignores classes; ``class_aware_nms`` changes that).

The reference loops over peaks and proposals in Python; here every term is one matrix product of
flattened maps and masks, chunked over proposals to bound memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch

from wsis.masks import opencv_single_thread


@dataclass
class RetrievalConfig:
    """How proposals are scored against an instance's response map: PRM's rule here, SGPO's
    (:class:`wsis.methods.mser_sgpo.sgpo.SGPOConfig` adds its saliency term) with the same weights and
    limits. Defaults are PRM's reference implementation's (demo ``param=(0.95, 1e-5, 0.8)``)."""

    alpha: float = 0.8  # weight of the PRM mass inside the proposal (the reference's balance_factor)
    beta: float = 1.0  # weight of the PRM mass on the proposal's contour
    gamma: float = 1e-5  # weight of the background pixels inside the proposal (penalty_factor)
    # The reference scores at 448 x 448, where gamma = 1e-5 weighs a full-image background at ~2 (the
    # PRM mass is ~1). To keep that balance at any scoring resolution, gamma is rescaled by
    # gamma_reference_area / (H * W); None applies it per pixel as the reference code does.
    gamma_reference_area: int | None = 448 * 448
    bg_threshold_factor: float = 0.95  # f: background = class response < f * mean response (PRM's rule)
    contour_width: int = 5
    size_limit: tuple[float, float] = (0.00002, 0.85)  # fraction of the image area
    proposal_count: int | None = None  # the reference scores only the first 100; None = all
    nms_threshold: float | None = 0.3
    merge_peak_response: bool = True
    class_aware_nms: bool = False
    # Not in the paper (issue 11, benchmarks/results/tune_retrieval.md): "prm" is Eq. 10 above, which
    # never loses by growing a proposal over more of the PRM's mass, so on photos it picks proposals
    # larger than the object; "iou" scores a proposal by its mask IoU with the instance's support,
    # the pixels where the peak's PRM, smoothed by a Gaussian of support_sigma (a fraction of the
    # scoring side), reaches support_threshold of its maximum (see support_masks).
    score: Literal["prm", "iou"] = "prm"
    support_threshold: float = 0.2
    support_sigma: float = 0.02


def contour_masks(masks: np.ndarray, width: int) -> np.ndarray:
    """Morphological gradient (dilation minus erosion) of each (H, W) mask with a width x width square."""
    kernel = np.ones((width, width), np.uint8)
    masks = np.ascontiguousarray(masks)
    out = np.empty(masks.shape, dtype=bool)
    with opencv_single_thread():  # one small image per call: OpenCV's pool costs more than it gives
        for i, m in enumerate(masks.view(np.uint8)):
            cv2.morphologyEx(m, cv2.MORPH_GRADIENT, kernel, dst=out[i].view(np.uint8))
    return out


def background_maps(class_maps: np.ndarray, factor: float) -> np.ndarray:
    """(C, H, W) class responses -> (C, H, W) float32 background indicator (response < f * mean)."""
    means = class_maps.reshape(len(class_maps), -1).mean(axis=1)
    return (class_maps < factor * means[:, None, None]).astype(np.float32)


def chunked_products(maps: np.ndarray, masks: np.ndarray, chunk: int = 64) -> np.ndarray:
    """sum over pixels of maps[k] * masks[p] for all k, p: (K, HW) @ (HW, P) without a full float
    copy of the masks: ``chunk`` masks at a time are converted into one reused float buffer (a
    fresh 100 MB block per chunk cost more in page faults than the product itself)."""
    k = torch.from_numpy(np.ascontiguousarray(maps.reshape(len(maps), -1), dtype=np.float32))
    flat = torch.from_numpy(np.ascontiguousarray(masks).reshape(len(masks), -1).view(np.uint8))
    out = torch.empty((len(maps), len(masks)), dtype=torch.float32)
    buffer = torch.empty((min(chunk, len(masks)), flat.shape[1]), dtype=torch.float32)
    for start in range(0, len(masks), chunk):
        block = buffer[: min(chunk, len(masks) - start)]
        block.copy_(flat[start:start + len(block)])
        torch.mm(k, block.T, out=out[:, start:start + len(block)])
    return out.double().numpy()


def proposal_scores(
    prms: np.ndarray,
    peak_classes: np.ndarray,
    class_maps: np.ndarray,
    masks: np.ndarray,
    cfg: RetrievalConfig,
    contours: np.ndarray | None = None,
) -> np.ndarray:
    """(K, P) retrieval scores of every proposal for every peak; -inf where the size limit skips it.

    ``prms`` (K, H, W); ``peak_classes`` (K,) indices into ``class_maps`` (C, H, W); ``masks``
    (P, H, W) bool, all at the same resolution.
    """
    if cfg.proposal_count is not None:
        masks = masks[: cfg.proposal_count]
        contours = None if contours is None else contours[: cfg.proposal_count]
    h, w = masks.shape[1:]
    if cfg.score == "iou":
        return _limit_sizes(support_iou(support_masks(prms, cfg.support_threshold, cfg.support_sigma), masks),
                            masks, cfg)
    if cfg.score != "prm":
        raise ValueError(f"retrieval.score must be prm or iou, not {cfg.score!r}")
    if contours is None:
        contours = contour_masks(masks, cfg.contour_width)
    classes, inverse = np.unique(peak_classes, return_inverse=True)
    bg = background_maps(class_maps[classes], cfg.bg_threshold_factor)
    # the PRMs and the background maps against the masks in one pass over the masks
    both = chunked_products(np.concatenate([prms.reshape(len(prms), -1), bg.reshape(len(bg), -1)]), masks)
    inside, bg_inside = both[: len(prms)], both[len(prms):][inverse]
    on_contour = chunked_products(prms, contours)
    scores = cfg.alpha * inside + cfg.beta * on_contour - scaled_gamma(cfg, h, w) * bg_inside
    return _limit_sizes(scores, masks, cfg)


def _limit_sizes(scores: np.ndarray, masks: np.ndarray, cfg: RetrievalConfig) -> np.ndarray:
    """-inf for the proposals outside ``cfg.size_limit`` (fractions of the image area)."""
    h, w = masks.shape[1:]
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    too_big_or_small = (areas >= cfg.size_limit[1] * h * w) | (areas < cfg.size_limit[0] * h * w)
    scores[:, too_big_or_small] = -np.inf
    return scores


def support_masks(prms: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """(K, H, W) PRMs -> (K, H, W) bool supports: each map smoothed by a Gaussian of ``sigma`` times
    its longer side (0: not smoothed; a PRM is a pixel-level map whose mass sits on edges and
    texture, the smoothing turns it into the region it covers), then thresholded at ``threshold``
    times its maximum. A map that is zero everywhere has an empty support."""
    out = np.zeros(prms.shape, dtype=bool)
    side = max(prms.shape[1:]) if prms.ndim == 3 else 1
    for k, prm in enumerate(np.asarray(prms, dtype=np.float32)):
        if sigma > 0:
            prm = cv2.GaussianBlur(prm, (0, 0), sigmaX=sigma * side, borderType=cv2.BORDER_CONSTANT)
        top = float(prm.max())
        if top > 0:
            out[k] = prm >= threshold * top
    return out


def support_iou(supports: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(K, P) mask IoU of every support (K, H, W) with every proposal (P, H, W)."""
    inter = chunked_products(supports.astype(np.float32), masks)
    size = supports.reshape(len(supports), -1).sum(axis=1).astype(np.float64)
    areas = masks.reshape(len(masks), -1).sum(axis=1).astype(np.float64)
    union = size[:, None] + areas[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def scaled_gamma(cfg: RetrievalConfig, height: int, width: int) -> float:
    """The background/class-irrelevant weight at a scoring resolution (see ``gamma_reference_area``)."""
    if cfg.gamma_reference_area is None:
        return cfg.gamma
    return cfg.gamma * (cfg.gamma_reference_area / float(height * width))  # the old code's rounding order


def mask_iou_matrix(masks: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, H, W) bool masks."""
    flat = masks.reshape(len(masks), -1).astype(np.float32)
    inter = flat @ flat.T
    area = flat.sum(axis=1)
    union = area[:, None] + area[None, :] - inter
    return inter / (union + 1e-10)


def instance_nms(
    scores: np.ndarray,
    masks: np.ndarray,
    prms: np.ndarray | None,
    threshold: float,
    labels: np.ndarray | None = None,
    merge: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Greedy mask NMS. Returns kept indices (by descending score) and, if ``prms`` is given, the
    kept instances' PRMs with the PRMs of the instances each one suppressed added to it."""
    order = np.argsort(-scores, kind="stable")
    iou = mask_iou_matrix(masks)
    alive = np.ones(len(scores), dtype=bool)
    keep: list[int] = []
    merged: list[np.ndarray] = []
    for i in order:
        if not alive[i]:
            continue
        alive[i] = False
        suppressed = alive & (iou[i] >= threshold)
        if labels is not None:
            suppressed &= labels == labels[i]
        alive &= ~suppressed
        keep.append(int(i))
        if prms is not None:
            prm = prms[i].copy()
            if merge and suppressed.any():
                prm += prms[suppressed].sum(axis=0)
            merged.append(prm)
    keep_arr = np.asarray(keep, dtype=np.int64)
    if prms is None:
        return keep_arr, None
    return keep_arr, (np.stack(merged) if merged else np.zeros((0,) + prms.shape[1:], prms.dtype))


@dataclass
class Retrieved:
    """Instances retrieved for the peaks of one image (after NMS)."""

    scores: np.ndarray  # (N,) retrieval score
    peak_classes: np.ndarray  # (N,) class index of the peak
    proposal_index: np.ndarray  # (N,) index of the chosen proposal
    peak_index: np.ndarray  # (N,) index of the peak that chose it
    prms: np.ndarray  # (N, H, W) merged peak response maps


def retrieve(
    prms: np.ndarray,
    peak_classes: np.ndarray,
    class_maps: np.ndarray,
    masks: np.ndarray,
    cfg: RetrievalConfig | None = None,
    contours: np.ndarray | None = None,
) -> Retrieved:
    """Best proposal per peak, then instance NMS (see module docstring)."""
    cfg = cfg or RetrievalConfig()
    peak_classes = np.asarray(peak_classes, dtype=np.int64)
    if len(prms) == 0 or len(masks) == 0:
        return _empty(prms)
    scores = proposal_scores(prms, peak_classes, class_maps, masks, cfg, contours)
    return select_instances(scores, prms, peak_classes, masks, cfg.nms_threshold,
                            merge=cfg.merge_peak_response, class_aware=cfg.class_aware_nms)


def _empty(prms: np.ndarray) -> Retrieved:
    return Retrieved(np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                     np.zeros((0,) + prms.shape[1:], np.float32))


def select_instances(scores: np.ndarray, prms: np.ndarray, peak_classes: np.ndarray, masks: np.ndarray,
                     nms_threshold: float | None, merge: bool = True, class_aware: bool = False) -> Retrieved:
    """From (K, P) scores: each peak's best proposal (peaks whose every proposal is -inf are dropped),
    then instance NMS at ``nms_threshold`` (None: no NMS, sorted by score)."""
    peak_classes = np.asarray(peak_classes, dtype=np.int64)
    if scores.size == 0:
        return _empty(prms)
    best = scores.argmax(axis=1)
    best_score = scores[np.arange(len(prms)), best]
    valid = np.isfinite(best_score)
    if not valid.any():
        return _empty(prms)
    peaks = np.flatnonzero(valid)
    best, best_score = best[valid], best_score[valid]
    chosen = masks[best]
    if nms_threshold is None:
        keep = np.argsort(-best_score, kind="stable")
        kept_prms = prms[peaks][keep]
    else:
        keep, kept_prms = instance_nms(
            best_score, chosen, prms[peaks], nms_threshold,
            labels=peak_classes[peaks] if class_aware else None, merge=merge,
        )
    return Retrieved(best_score[keep], peak_classes[peaks][keep], best[keep], peaks[keep], kept_prms)
