"""Greedy VOC-style matching and average precision, shared by mask (mAP^r) and box (detection) AP.

Matching is split in two so that an IoU matrix is computed once per image and reused for every
threshold:

1. :func:`best_matches` (per image, threshold-free): each prediction's best same-class
   ground-truth instance and IoU, and its best overlap with a same-class crowd region.
2. :func:`assign` (all images at once, per threshold, vectorised): true/false positives.

Rules (BENCHMARK.md): a prediction is a TP iff its best same-class instance has IoU >= t and no
higher-ranked prediction of the same image took that instance; there is no fallback to the
second-best instance. A prediction whose best instance is VOC ``difficult`` (IoU >= t) is ignored,
as in the VOC detection devkit, and difficult instances are not positives. A prediction that is not
a TP but covers a same-class crowd region (crowd overlap >= t) is ignored too.

Ties in score: predictions of equal score form one block and the precision/recall curve gets a
point only after a whole block, so AP does not depend on how ties happen to be ordered. Within an
image, tied predictions claim instances in input order (stable sort).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass
class ImageMatches:
    """Threshold-free matching facts of one image's predictions (index i = prediction i)."""

    labels: np.ndarray  # (P,) int64
    scores: np.ndarray  # (P,) float64
    best_iou: np.ndarray  # (P,) IoU with the best same-class instance, 0 if none
    best_gt: np.ndarray  # (P,) index of that instance in the image's instance list, -1 if none
    best_difficult: np.ndarray  # (P,) bool: that instance is VOC difficult
    crowd_overlap: np.ndarray  # (P,) best overlap with a same-class crowd region, 0 if none


def best_matches(
    iou: np.ndarray,
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    gt_difficult: np.ndarray,
    crowd_overlap: np.ndarray,
    crowd_labels: np.ndarray,
    pred_scores: np.ndarray,
) -> ImageMatches:
    """Best same-class instance per prediction from the (P, G) ``iou`` and (P, C) ``crowd_overlap``."""
    pred_labels = np.asarray(pred_labels, np.int64)
    p = len(pred_labels)
    same = pred_labels[:, None] == np.asarray(gt_labels, np.int64)[None, :]
    # -1 marks other-class pairs so argmax never picks them; a same-class IoU of 0 still wins.
    masked = np.where(same, iou, -1.0)
    if masked.shape[1]:
        best_gt = masked.argmax(axis=1)
        best_iou = masked[np.arange(p), best_gt]
        best_gt = np.where(best_iou >= 0, best_gt, -1)
        best_iou = np.clip(best_iou, 0.0, None)
    else:
        best_gt = np.full(p, -1, np.int64)
        best_iou = np.zeros(p)
    difficult = np.asarray(gt_difficult, bool)
    best_difficult = np.where(best_gt >= 0, difficult[np.maximum(best_gt, 0)] if len(difficult) else False, False)
    same_crowd = pred_labels[:, None] == np.asarray(crowd_labels, np.int64)[None, :]
    crowd = np.where(same_crowd, crowd_overlap, 0.0).max(axis=1, initial=0.0)
    return ImageMatches(
        pred_labels, np.asarray(pred_scores, np.float64), best_iou.astype(np.float64),
        best_gt.astype(np.int64), best_difficult.astype(bool), crowd,
    )


@dataclass
class MatchTable:
    """All images' :class:`ImageMatches` concatenated, instance ids made unique across images."""

    labels: np.ndarray
    scores: np.ndarray
    best_iou: np.ndarray
    best_gt: np.ndarray  # global instance id, -1 if none
    best_difficult: np.ndarray
    crowd_overlap: np.ndarray
    order: np.ndarray  # stable descending-score order; keeps each image's input order among ties

    @staticmethod
    def build(per_image: Sequence[tuple[ImageMatches, int]]) -> "MatchTable":
        """``per_image`` = (matches, number of instances in that image) in image order."""
        parts = [m for m, _ in per_image]
        offsets = np.cumsum([0] + [n for _, n in per_image])[:-1]
        if parts:
            gt = np.concatenate([np.where(m.best_gt >= 0, m.best_gt + off, -1) for m, off in zip(parts, offsets)])
            cat = lambda name, dtype: np.concatenate([getattr(m, name) for m in parts]).astype(dtype)  # noqa: E731
            labels, scores = cat("labels", np.int64), cat("scores", np.float64)
            best_iou, difficult, crowd = cat("best_iou", np.float64), cat("best_difficult", bool), cat("crowd_overlap", np.float64)
        else:
            gt = np.zeros(0, np.int64)
            labels, scores, best_iou = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
            difficult, crowd = np.zeros(0, bool), np.zeros(0)
        order = np.argsort(-scores, kind="stable")
        return MatchTable(labels, scores, best_iou, gt.astype(np.int64), difficult, crowd, order)


def assign(table: MatchTable, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp) bool arrays over ``table``'s predictions at IoU ``threshold``; neither = ignored."""
    hit = (table.best_gt >= 0) & (table.best_iou >= threshold)
    claim = hit & ~table.best_difficult
    tp = np.zeros(len(claim), bool)
    ranked = table.order[claim[table.order]]
    # Instance ids are global, so the first claimant in the global stable order is the first
    # claimant within its image; later claimants of a taken instance are not TPs (no fallback).
    _, first = np.unique(table.best_gt[ranked], return_index=True)
    tp[ranked[first]] = True
    not_tp = ~tp & ~(hit & table.best_difficult)
    fp = not_tp & ~(table.crowd_overlap >= threshold)
    return tp, fp


def average_precision(scores: np.ndarray, tp: np.ndarray, fp: np.ndarray, num_positives: int) -> float:
    """VOC2010+ AP (area under the precision envelope) with equal scores taken as one block.

    ``tp``/``fp`` flag each prediction; predictions that are neither are ignored. Returns 0 when
    there are positives but no true positives, NaN when ``num_positives`` is 0.
    """
    if num_positives <= 0:
        return float("nan")
    keep = tp | fp
    s, t = scores[keep], tp[keep]
    if len(s) == 0:
        return 0.0
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    tp_cum = np.cumsum(t)
    fp_cum = np.cumsum(~t)
    block_end = np.r_[s[1:] != s[:-1], True]
    tp_cum, fp_cum = tp_cum[block_end], fp_cum[block_end]
    recall = tp_cum / num_positives
    precision = tp_cum / (tp_cum + fp_cum)
    mrec = np.r_[0.0, recall, 1.0]
    mpre = np.r_[0.0, precision, 0.0]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def ap_per_class(
    table: MatchTable, thresholds: Iterable[float], positives: dict[int, int]
) -> dict[float, dict[int, float]]:
    """{threshold: {class id: AP}} for every class with positives (0 when it has no prediction)."""
    out: dict[float, dict[int, float]] = {}
    classes = sorted(c for c, n in positives.items() if n > 0)
    rows = {c: np.nonzero(table.labels == c)[0] for c in classes}
    for t in thresholds:
        tp, fp = assign(table, float(t))
        out[float(t)] = {
            c: average_precision(table.scores[r], tp[r], fp[r], positives[c]) for c, r in rows.items()
        }
    return out


def mean_ap(per_class: dict[int, float]) -> float:
    """Mean over the classes given (those with positives); 0 when there are none."""
    values = [v for v in per_class.values() if not np.isnan(v)]
    return float(np.mean(values)) if values else 0.0


def threshold_key(t: float) -> str:
    """JSON-stable key of a threshold: 0.5 -> "0.5", 0.25 -> "0.25"."""
    return format(float(t), "g")
