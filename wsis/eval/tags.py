"""Image-level tag metrics: per-class AP of image scores against image tags, and the precision /
recall of the (image, class) pairs a threshold lets through. Used by the stage-by-stage diagnosis
(``benchmarks/diagnose.py``, row a) and by threshold calibration on training images."""
from __future__ import annotations

import numpy as np

from wsis.eval.matching import average_precision


def tag_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N, C) scores and (N, C) 0/1 targets -> (C,) AP per class (VOC2010+ area, ties as one block);
    NaN for a class without positive images."""
    scores, targets = np.asarray(scores, float), np.asarray(targets).astype(bool)
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        positives = int(targets[:, c].sum())
        if positives:
            out[c] = average_precision(scores[:, c], targets[:, c], ~targets[:, c], positives)
    return out


def tag_map(scores: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
    """Mean tag AP over the classes with a positive image, and how many classes that is."""
    ap = tag_ap(scores, targets)
    valid = ~np.isnan(ap)
    return (float(ap[valid].mean()) if valid.any() else 0.0), int(valid.sum())


def threshold_precision_recall(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | float
                               ) -> dict[str, float]:
    """Precision and recall of the (image, class) pairs with score >= the class's threshold, over all
    pairs (micro average), and how many pairs pass."""
    scores, targets = np.asarray(scores, float), np.asarray(targets).astype(bool)
    passed = scores >= np.broadcast_to(np.asarray(thresholds, float), scores.shape[1:])
    tp = int((passed & targets).sum())
    n_pass, n_pos = int(passed.sum()), int(targets.sum())
    return {"precision": tp / n_pass if n_pass else 0.0, "recall": tp / n_pos if n_pos else 0.0,
            "passed": n_pass, "positives": n_pos, "true_positives": tp}
