"""Fully connected CRF (Krähenbühl & Koltun, NIPS 2011) over per-pixel label probabilities, through
``pydensecrf`` (the ``pydensecrf2`` package): the mean-field refinement that Label-PEnet applies to
its instance confident maps (and DeepLab-style methods to their score maps).

Without ``pydensecrf`` installed, :func:`dense_crf` falls back to the per-pixel argmax of the
probabilities (the CRF's unary term alone) and says so once per process in one warning line; the
results are then coarser but the pipeline runs. ``CRFConfig.enabled=false`` asks for that argmax
without the warning.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsis.errors import warn

_WARNED = False


@dataclass
class CRFConfig:
    enabled: bool = True
    iterations: int = 10
    # DeepLab's defaults for the two kernels (pixel units and 0..255 colours).
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0


def crf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def dense_crf(image: np.ndarray, probs: np.ndarray, cfg: CRFConfig | None = None) -> np.ndarray:
    """(H, W) labels in 0..L-1 of an (H, W, 3) uint8 RGB ``image`` from (L, H, W) probabilities
    (each pixel's column is normalised to sum to 1; a zero column gets label 0)."""
    global _WARNED
    cfg = cfg or CRFConfig()
    probs = np.asarray(probs, np.float32)
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"dense_crf: probabilities {probs.shape} do not match the image {image.shape[:2]}")
    total = probs.sum(axis=0, keepdims=True)
    probs = np.where(total > 0, probs / np.maximum(total, 1e-12), 0.0).astype(np.float32)
    probs[0] = np.where(total[0] > 0, probs[0], 1.0)
    if probs.shape[0] < 2 or not cfg.enabled or cfg.iterations <= 0:
        return probs.argmax(axis=0)
    if not crf_available():
        if not _WARNED:
            warn("pydensecrf is not installed (pip install pydensecrf2): dense CRF steps use the per-pixel argmax")
            _WARNED = True
        return probs.argmax(axis=0)
    import pydensecrf.densecrf as dcrf

    labels, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, labels)
    # -log of probabilities clipped away from 0, so that a label is never made impossible.
    unary = -np.log(np.clip(probs, 1e-5, 1.0)).reshape(labels, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    crf.addPairwiseBilateral(sxy=cfg.bilateral_sxy, srgb=cfg.bilateral_srgb,
                             rgbim=np.ascontiguousarray(image[..., :3], dtype=np.uint8), compat=cfg.bilateral_compat)
    q = np.asarray(crf.inference(cfg.iterations)).reshape(labels, h, w)
    return q.argmax(axis=0)
