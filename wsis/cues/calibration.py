"""Per-class score thresholds calibrated on training images.

A class passes an image when its score is >= the class's threshold. Scores of the training images
themselves are optimistic (the classifier saw them), so thresholds are chosen on out-of-fold scores:
split the training images in ``k`` folds, train on ``k - 1``, score the held-out fold
(:func:`kfold_indices` gives the folds; the training is the caller's). On those scores each class
gets the threshold that maximises its F1 (``beta`` trades recall for precision). A class with fewer
than ``min_positives`` positive training images cannot be calibrated reliably; it gets the fallback:
the threshold that maximises F1 over all such rare classes pooled, or ``default`` when even that
pool is empty. Scores are compared on the scale the caller gives (logits or probabilities).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Calibration:
    thresholds: np.ndarray  # (C,) per class
    calibrated: np.ndarray  # (C,) bool: own threshold (True) or the rare-class fallback (False)
    fallback: float

    def to_dict(self) -> dict:
        return {"thresholds": [float(t) for t in self.thresholds],
                "calibrated": [bool(c) for c in self.calibrated], "fallback": float(self.fallback)}


def kfold_indices(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    """``k`` disjoint held-out index sets covering range(n), shuffled by ``seed``."""
    if not 2 <= k <= n:
        raise ValueError(f"need 2 <= k <= n, got k={k}, n={n}")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[i::k]) for i in range(k)]


def best_f1_threshold(scores: np.ndarray, targets: np.ndarray, beta: float = 1.0) -> tuple[float, float]:
    """The threshold (one of the scores, or +inf when nothing is positive) maximising F_beta of
    ``scores >= t`` against ``targets``; returns (threshold, F_beta). Ties go to the higher threshold."""
    scores, targets = np.asarray(scores, float).ravel(), np.asarray(targets).astype(bool).ravel()
    n_pos = int(targets.sum())
    if n_pos == 0 or len(scores) == 0:
        return float("inf"), 0.0
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], targets[order]
    tp = np.cumsum(t)
    passed = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True]  # a threshold passes all tied scores at once
    tp, passed, cut = tp[last], passed[last], s[last]
    b2 = beta * beta
    f = (1 + b2) * tp / (b2 * n_pos + passed)
    best = int(np.flatnonzero(f == f.max())[0])
    return float(cut[best]), float(f[best])


def calibrate_thresholds(scores: np.ndarray, targets: np.ndarray, min_positives: int = 3,
                         beta: float = 1.0, default: float = 0.0) -> Calibration:
    """Per-class thresholds from (N, C) held-out scores and (N, C) 0/1 targets (module docstring)."""
    scores, targets = np.asarray(scores, float), np.asarray(targets).astype(bool)
    counts = targets.sum(axis=0)
    rare = counts < min_positives
    if rare.any() and targets[:, rare].any():
        fallback, _ = best_f1_threshold(scores[:, rare], targets[:, rare], beta)
    elif (~rare).any():
        fallback, _ = best_f1_threshold(scores, targets, beta)
    else:
        fallback = default
    if not np.isfinite(fallback):
        fallback = default
    thresholds = np.full(scores.shape[1], fallback, dtype=float)
    for c in np.flatnonzero(~rare):
        thresholds[c], _ = best_f1_threshold(scores[:, c], targets[:, c], beta)
    return Calibration(thresholds, ~rare, float(fallback))
