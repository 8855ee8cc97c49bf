"""Semantic segmentation view of instance predictions: label maps and mean IoU.

mIoU follows PASCAL VOC's semantic benchmark: one confusion matrix over background + classes,
accumulated over all pixels of all images except ignore pixels (VOC's 255 band) and crowd regions;
IoU per class = TP / (TP + FP + FN); the mean is over background and the classes present in the
ground truth or the predictions (a class absent from both has no defined IoU and is left out).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from wsis.eval.inputs import Predictions, check_predictions, evaluated_classes, ground_truth, predictions_for
from wsis.eval.subsets import restrict
from wsis.structures import ImageRecord, Instances, RecordSet


def instances_to_semantic(instances: Instances, class_map: Mapping[int, int]) -> np.ndarray:
    """(H, W) int64 label map: each pixel takes ``class_map[label]`` of the highest-scoring mask
    covering it (first in input order among equal scores), 0 where none does. Instances whose
    label is not in ``class_map`` are skipped."""
    h, w = instances.image_size
    keep = np.nonzero(np.isin(instances.labels, list(class_map)))[0]
    if len(keep) == 0:
        return np.zeros((h, w), np.int64)
    order = keep[np.argsort(-instances.scores[keep], kind="stable")]
    masks = instances.select(order).mask_array()
    index = np.array([class_map[int(c)] for c in instances.labels[order]], np.int64)
    covered = masks.any(axis=0)
    # argmax finds the first covering mask in score order, i.e. the highest-scoring one.
    return np.where(covered, index[masks.argmax(axis=0)], 0)


def _valid_pixels(record: ImageRecord, gt: Instances) -> np.ndarray:
    valid = np.ones(record.size, bool)
    if record.ignore is not None:
        valid &= ~record.ignore_mask()
    if record.crowd.any():
        valid &= ~gt.select(np.nonzero(record.crowd)[0]).mask_array().any(axis=0)
    return valid


def _confusion(gt: RecordSet, preds: Predictions, class_map: Mapping[int, int]) -> np.ndarray:
    k = len(class_map) + 1
    confusion = np.zeros((k, k), np.int64)
    for record in gt.records:
        truth = ground_truth(record, need_masks=True)
        truth_map = instances_to_semantic(truth.select(np.nonzero(~record.crowd)[0]), class_map)
        pred_map = instances_to_semantic(predictions_for(record, preds), class_map)
        valid = _valid_pixels(record, truth)
        pairs = truth_map[valid] * k + pred_map[valid]
        confusion += np.bincount(pairs, minlength=k * k).reshape(k, k)
    return confusion


def semantic_miou(gt: RecordSet, preds: Predictions, category_ids: Iterable[int] | None = None) -> dict:
    """``{"miou", "background_iou", "per_class_iou": {id: IoU | None}, "pixel_accuracy", "confusion"}``
    (confusion rows = ground truth, columns = prediction, index 0 = background, then ``classes``)."""
    check_predictions(gt, preds, need_masks=True)
    if category_ids is not None:
        gt, preds = restrict(gt, preds, category_ids)
    classes = evaluated_classes(gt, category_ids)
    class_map = {c: i + 1 for i, c in enumerate(classes)}
    confusion = _confusion(gt, preds, class_map)
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - inter
    present = union > 0
    iou = np.where(present, inter / np.maximum(union, 1), np.nan)
    total = confusion.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "background_iou": None if np.isnan(iou[0]) else float(iou[0]),
        "per_class_iou": {c: None if np.isnan(iou[i]) else float(iou[i]) for c, i in class_map.items()},
        "pixel_accuracy": float(inter.sum() / total) if total else 0.0,
        "classes": classes,
        "confusion": confusion.tolist(),
    }
