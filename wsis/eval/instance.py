"""VOC-protocol instance segmentation metrics: mAP^r at several mask-IoU thresholds, and ABO.

Protocol: BENCHMARK.md, matching rules in :mod:`wsis.eval.matching`. Specifics of this module:

* IoU is computed on masks minus the record's ignore region (VOC's 255 band), for matching, crowd
  overlap and ABO alike; each image's IoU matrix is computed once (pycocotools, C) for all thresholds.
* Crowd overlap is COCO's intersection / prediction area.
* VOC ``difficult`` instances are not positives; a prediction whose best instance is difficult is
  ignored. They still count as instances for ABO (every non-crowd instance does).
* mAP is the mean over classes with positives; a class with positives and no TP scores 0; classes
  with predictions but no positives are not averaged. With no positives at all mAP is 0.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from wsis import masks as mask_ops
from wsis.eval.inputs import (
    Predictions, check_predictions, count_positives, evaluated_classes, ground_truth, masks_without_ignore, predictions_for,
)
from wsis.eval.matching import ImageMatches, MatchTable, ap_per_class, best_matches, mean_ap, threshold_key
from wsis.eval.subsets import restrict
from wsis.structures import ImageRecord, Instances, RecordSet

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.25, 0.5, 0.7, 0.75)


class _ImageResult:
    """One image's threshold-free matching facts and best overlaps per instance (for ABO)."""

    def __init__(self, record: ImageRecord, pred: Instances) -> None:
        gt = ground_truth(record, need_masks=True)
        gt_rles, pred_rles = masks_without_ignore(record, gt, pred)
        crowd = record.crowd
        # One call gives both instance IoUs and crowd overlaps (intersection / prediction area).
        iou = mask_ops.iou(pred_rles, gt_rles, crowd)
        inst_iou, crowd_iou = iou[:, ~crowd], iou[:, crowd]
        inst_labels = gt.labels[~crowd]
        self.num_instances = int((~crowd).sum())
        self.matches: ImageMatches = best_matches(
            inst_iou, pred.labels, inst_labels, record.difficult[~crowd], crowd_iou, gt.labels[crowd], pred.scores
        )
        same = pred.labels[:, None] == inst_labels[None, :]
        self.instance_labels = inst_labels
        self.best_same_class = np.where(same, inst_iou, 0.0).max(axis=0, initial=0.0)
        self.best_any = inst_iou.max(axis=0, initial=0.0)


def evaluate_instances(
    gt: RecordSet,
    preds: Predictions,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    category_ids: Iterable[int] | None = None,
) -> dict:
    """VOC-protocol mAP^r per threshold, per-class AP, ABO (class-aware and agnostic) and counts.

    Returns ``{"thresholds", "mAP": {"0.5": ...}, "per_class_ap": {id: {"0.5": ...}},
    "abo", "abo_agnostic", "per_class_abo": {id: ...}, "counts": {...}}``. Threshold keys are
    strings so the result survives a JSON round trip; per-class tables are keyed by category id
    (classes with positives for AP, with instances for ABO). ``category_ids`` restricts both sides.
    """
    if not thresholds or any(not 0 < float(t) <= 1 for t in thresholds):
        raise ValueError(f"IoU thresholds must lie in (0, 1], got {list(thresholds)}")
    check_predictions(gt, preds, need_masks=True)
    if category_ids is not None:
        gt, preds = restrict(gt, preds, category_ids)
    classes = evaluated_classes(gt, category_ids)
    results = [_ImageResult(r, predictions_for(r, preds)) for r in gt.records]
    table = MatchTable.build([(res.matches, res.num_instances) for res in results])
    positives = count_positives(gt, classes)
    aps = ap_per_class(table, thresholds, positives)
    keys = [threshold_key(t) for t in thresholds]
    per_class_ap = {c: {k: aps[float(t)][c] for k, t in zip(keys, thresholds)} for c in sorted(aps[float(thresholds[0])])}
    return {
        "thresholds": [float(t) for t in thresholds],
        "mAP": {k: mean_ap(aps[float(t)]) for k, t in zip(keys, thresholds)},
        "per_class_ap": per_class_ap,
        **_abo(results),
        "counts": _counts(gt, table, positives),
    }


def _abo(results: list[_ImageResult]) -> dict:
    labels = np.concatenate([r.instance_labels for r in results]) if results else np.zeros(0, np.int64)
    same = np.concatenate([r.best_same_class for r in results]) if results else np.zeros(0)
    agnostic = np.concatenate([r.best_any for r in results]) if results else np.zeros(0)
    per_class = {int(c): float(same[labels == c].mean()) for c in np.unique(labels)}
    return {
        "abo": float(same.mean()) if len(same) else 0.0,
        "abo_agnostic": float(agnostic.mean()) if len(agnostic) else 0.0,
        "per_class_abo": per_class,
    }


def _counts(gt: RecordSet, table: MatchTable, positives: dict[int, int]) -> dict:
    crowd = sum(int(r.crowd.sum()) for r in gt.records)
    difficult = sum(int((r.difficult & ~r.crowd).sum()) for r in gt.records)
    pred_labels, pred_counts = np.unique(table.labels, return_counts=True)
    return {
        "images": len(gt.records),
        "instances": gt.num_instances,
        "positives": int(sum(positives.values())),
        "difficult": difficult,
        "crowd": crowd,
        "predictions": int(len(table.labels)),
        "classes_with_positives": int(sum(1 for n in positives.values() if n > 0)),
        "predictions_per_class": {int(c): int(n) for c, n in zip(pred_labels, pred_counts)},
        "positives_per_class": {c: n for c, n in sorted(positives.items()) if n > 0},
    }
