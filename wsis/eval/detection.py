"""Box metrics for detection branches and weakly supervised localisation: VOC detection AP, CorLoc.

``detection_ap`` uses the same greedy matching, difficult/crowd handling and tie blocks as the mask
mAP^r (:mod:`wsis.eval.matching`), on box IoU. A crowd box excuses a non-TP prediction when
intersection / prediction box area >= the threshold (COCO's crowd convention).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from wsis.eval.inputs import (
    Predictions, check_predictions, count_positives, evaluated_classes, ground_truth, predictions_for,
)
from wsis.eval.matching import MatchTable, ap_per_class, best_matches, mean_ap
from wsis.eval.subsets import restrict
from wsis.masks import box_iou
from wsis.structures import ImageRecord, Instances, RecordSet


def box_crowd_overlap(boxes: np.ndarray, crowd_boxes: np.ndarray) -> np.ndarray:
    """(N, M) intersection / area of each predicted box (0 for an empty box)."""
    a = np.asarray(boxes, np.float64).reshape(-1, 4)
    b = np.asarray(crowd_boxes, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)[:, None]
    return np.where(area > 0, inter / np.maximum(area, 1e-12), 0.0)


def _image_matches(record: ImageRecord, pred: Instances):
    gt = ground_truth(record, need_masks=False)
    crowd = record.crowd
    iou = box_iou(pred.boxes, gt.boxes[~crowd])
    overlap = box_crowd_overlap(pred.boxes, gt.boxes[crowd])
    matches = best_matches(
        iou, pred.labels, gt.labels[~crowd], record.difficult[~crowd], overlap, gt.labels[crowd], pred.scores
    )
    return matches, int((~crowd).sum())


def detection_ap(
    gt: RecordSet, preds: Predictions, iou_threshold: float = 0.5, category_ids: Iterable[int] | None = None
) -> dict:
    """VOC detection AP on boxes: ``{"mAP", "per_class_ap": {id: AP}, "iou_threshold", "positives"}``."""
    check_predictions(gt, preds, need_masks=False)
    if category_ids is not None:
        gt, preds = restrict(gt, preds, category_ids)
    positives = count_positives(gt, evaluated_classes(gt, category_ids))
    table = MatchTable.build([_image_matches(r, predictions_for(r, preds)) for r in gt.records])
    per_class = ap_per_class(table, [iou_threshold], positives)[float(iou_threshold)]
    return {
        "iou_threshold": float(iou_threshold),
        "mAP": mean_ap(per_class),
        "per_class_ap": per_class,
        "positives": int(sum(positives.values())),
    }


def _top_box_hits(record: ImageRecord, pred: Instances, category: int, threshold: float) -> bool:
    """Whether the top-scoring box of ``category`` (first one among ties) hits a gt box of it."""
    mine = np.nonzero(pred.labels == category)[0]
    if len(mine) == 0 or record.gt is None:
        return False
    top = mine[np.argmax(pred.scores[mine])]
    truth = record.gt.boxes[(record.gt.labels == category) & ~record.crowd]
    return bool((box_iou(pred.boxes[top:top + 1], truth) >= threshold).any())


def corloc(gt: RecordSet, preds: Predictions, category_ids: Iterable[int] | None = None) -> dict:
    """CorLoc: per class, the fraction of images tagged with it whose top box of that class has
    IoU >= 0.5 with one of its gt boxes (difficult ones included); ``corloc`` = mean over classes
    tagged in at least one image. An image with no box of the class counts as a miss."""
    check_predictions(gt, preds, need_masks=False)
    if category_ids is not None:
        gt, preds = restrict(gt, preds, category_ids)
    hits: dict[int, list[bool]] = {}
    for record in gt.records:
        pred = predictions_for(record, preds)
        for c in record.tags:
            hits.setdefault(int(c), []).append(_top_box_hits(record, pred, int(c), 0.5))
    per_class = {c: float(np.mean(h)) for c, h in sorted(hits.items())}
    return {
        "corloc": float(np.mean(list(per_class.values()))) if per_class else 0.0,
        "per_class": per_class,
        "images_per_class": {c: len(h) for c, h in sorted(hits.items())},
    }
