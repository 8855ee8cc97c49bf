"""Saliency-guided proposals ordering (SGPO, Hu et al. 2021, Eqs. 4-8), vectorised over proposals.

For an instance representation ``E`` (an enhanced peak response map, class ``c``) and every proposal
mask ``OP`` with contour ``CP``::

    Score = alpha * sum(E * OP)              instance-aware   (Eq. 5)
          + beta  * sum(E * CP)              boundary-aware   (Eq. 6)
          + gamma * -sum(F_c^r * OP)         class-aware      (Eq. 7)
          + omega * sum(E * Sm * OP)         saliency-aware   (Eq. 8)

``CP`` is the morphological gradient of width 5 and the weights and size limits are PRM's (one
config: :class:`wsis.proposals.retrieval.RetrievalConfig`, which this module's config extends);
each term is one chunked matrix product of flattened maps and masks. Each representation keeps its
best proposal; instance NMS (IoU 0.3, PRMs of suppressed instances merged into the kept one) then
merges the proposals that different representations -- e.g. different parts found by different
MSER stages -- chose for the same object.

**The class-irrelevant map F_c^r.** The paper: F_c^r keeps the responses of ``F_c`` below its mean
and sets the others to zero, and the class-aware term *punishes* them. Taken literally the sign of
the term depends on the sign of the low responses: CRMs are un-rectified logits, and where they are
negative ``-sum(F_c^r * OP)`` would *reward* a proposal for covering the class-irrelevant region.
The default ``class_irrelevant="gap"`` keeps the paper's support (pixels below the mean) and uses
how far below the mean each pixel is, ``(mean - F_c) / (mean - min F_c)`` in [0, 1], so the term is a
penalty whatever the CRM's offset, and its upper bound is PRM's binary background indicator, which
keeps PRM's weight gamma = 1e-5 on the same scale. ``"literal"`` is the paper's words (F_c below the
mean, 0 elsewhere) and ``"binary"`` PRM's indicator (1 below the mean).

**Weights.** The paper sets alpha, beta, gamma, omega "as in PRM": PRM's alpha = 0.8, beta = 1,
gamma = 1e-5 (for PRMs normalised to sum 1, as here). PRM has no saliency term; omega = 1 gives the
salient part of ``E`` the weight of its contour, so a proposal covering the salient part of the
representation can gain at most what it gains from the instance-aware term (saliency is in [0, 1]).

**Saliency.** The paper uses R3Net, which is not available here. The default is OpenCV's spectral
residual: it marks salient *regions* (blob-level), the closest stand-in for a region-level
detector's map, whereas the fine-grained method responds to local centre-surround contrast, i.e.
texture and edges, and leaves object interiors dark -- which would make Eq. 8 favour proposals along
textured boundaries rather than on objects. Precomputed R3Net maps load with ``saliency=<folder>``
(:class:`wsis.cues.saliency.FolderSaliency`, one greyscale map per image stem).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from wsis.proposals.retrieval import (RetrievalConfig, Retrieved, chunked_products, contour_masks, scaled_gamma,
                                      select_instances)

ClassIrrelevant = Literal["gap", "literal", "binary"]


@dataclass
class SGPOConfig(RetrievalConfig):
    """Eq. 4's weights: alpha (instance-aware), beta (boundary-aware) and gamma (class-aware, rescaled
    by ``gamma_reference_area`` as PRM's penalty), with PRM's contour width, size limits and NMS (all
    from :class:`~wsis.proposals.retrieval.RetrievalConfig`), plus the saliency-aware term's."""

    omega: float = 1.0  # saliency-aware
    class_irrelevant: ClassIrrelevant = "gap"
    saliency: str = "spectral_residual"  # spectral_residual, fine_grained, or a folder of maps (R3Net)


def class_irrelevant_maps(class_maps: np.ndarray, mode: ClassIrrelevant = "gap") -> np.ndarray:
    """(C, H, W) class responses -> (C, H, W) float32 F_c^r, zero where F_c >= its mean."""
    maps = np.asarray(class_maps, dtype=np.float32)
    flat = maps.reshape(len(maps), -1)
    mean = flat.mean(axis=1)[:, None, None]
    below = maps < mean
    if mode == "literal":
        return np.where(below, maps, 0.0).astype(np.float32)
    if mode == "binary":
        return below.astype(np.float32)
    if mode == "gap":
        depth = np.maximum(mean - flat.min(axis=1)[:, None, None], 1e-12)
        return np.where(below, (mean - maps) / depth, 0.0).astype(np.float32)
    raise ValueError(f"unknown class-irrelevant map {mode!r}; expected gap, literal or binary")


def sgpo_terms(prms: np.ndarray, peak_classes: np.ndarray, class_maps: np.ndarray, saliency: np.ndarray,
               masks: np.ndarray, contours: np.ndarray, mode: ClassIrrelevant = "gap") -> dict[str, np.ndarray]:
    """The four (K, P) terms of Eqs. 5-8, signs included (``cla`` is <= 0 for a penalty map).

    ``prms`` (K, H, W) representations E; ``peak_classes`` (K,) indices into ``class_maps``
    (C, H, W); ``saliency`` (H, W) in [0, 1]; ``masks`` and ``contours`` (P, H, W) bool.
    """
    peak_classes = np.asarray(peak_classes, dtype=np.int64)
    classes, inverse = np.unique(peak_classes, return_inverse=True)
    irrelevant = class_irrelevant_maps(class_maps[classes], mode)
    return {
        "ins": chunked_products(prms, masks),
        "bou": chunked_products(prms, contours),
        "cla": -chunked_products(irrelevant, masks)[inverse],
        "sal": chunked_products(prms * saliency[None].astype(np.float32), masks),
    }


def size_filter(masks: np.ndarray, size_limit: tuple[float, float]) -> np.ndarray:
    """(P,) bool: proposals whose area is outside [lo, hi) of the image area (skipped, as PRM does)."""
    h, w = masks.shape[1:]
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    return (areas >= size_limit[1] * h * w) | (areas < size_limit[0] * h * w)


def sgpo_scores(prms: np.ndarray, peak_classes: np.ndarray, class_maps: np.ndarray, saliency: np.ndarray,
                masks: np.ndarray, cfg: SGPOConfig, contours: np.ndarray | None = None) -> np.ndarray:
    """(K, P) Eq. 4 scores; -inf for proposals outside the size limits."""
    if cfg.score != "prm":
        raise ValueError(f"retrieval.score={cfg.score} replaces PRM's Eq. 10, not SGPO's Eq. 4: use it with "
                         "scoring=prm")
    if contours is None:
        contours = contour_masks(masks, cfg.contour_width)
    t = sgpo_terms(prms, peak_classes, class_maps, saliency, masks, contours, cfg.class_irrelevant)
    gamma = scaled_gamma(cfg, masks.shape[1], masks.shape[2])
    scores = cfg.alpha * t["ins"] + cfg.beta * t["bou"] + gamma * t["cla"] + cfg.omega * t["sal"]
    scores[:, size_filter(masks, cfg.size_limit)] = -np.inf
    return scores


def sgpo_retrieve(prms: np.ndarray, peak_classes: np.ndarray, class_maps: np.ndarray, saliency: np.ndarray,
                  masks: np.ndarray, cfg: SGPOConfig | None = None,
                  contours: np.ndarray | None = None) -> Retrieved:
    """Best proposal per representation by Eq. 4, then instance NMS merging overlapping choices."""
    cfg = cfg or SGPOConfig()
    if saliency.shape != masks.shape[1:]:
        raise ValueError(f"saliency {saliency.shape} and masks {masks.shape[1:]} differ in size")
    if len(prms) == 0 or len(masks) == 0:
        return select_instances(np.zeros((len(prms), 0)), prms, peak_classes, masks, None)
    scores = sgpo_scores(prms, peak_classes, class_maps, saliency, masks, cfg, contours)
    return select_instances(scores, prms, peak_classes, masks, cfg.nms_threshold,
                            merge=cfg.merge_peak_response, class_aware=cfg.class_aware_nms)
