"""COCO protocol through pycocotools' ``COCOeval`` (default parameters), built in memory.

Conventions:

* The COCO objects are built from the :class:`RecordSet` and predictions directly (no temp files,
  pycocotools' prints silenced). Images without predictions simply have no detections, so "no
  predictions at all" gives AP 0 for every class with ground truth.
* A value pycocotools reports as -1 (no ground truth in that class / area range) is returned as
  ``None`` (JSON null): it is undefined, not zero.
* Ground-truth ``area`` (used for the small/medium/large ranges) is the mask's pixel count (the
  original COCO polygon area is not kept by the readers), the box area when there are no masks.
* Ignore regions are removed from every mask before scoring, as in the VOC protocol. VOC
  ``difficult`` instances are passed as ``iscrowd=1`` because COCOeval overwrites any other ignore
  flag with ``iscrowd``: a prediction covering them is then neither TP nor FP.
"""
from __future__ import annotations

import contextlib
import io
from typing import Iterable

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from wsis import masks as mask_ops
from wsis.eval.inputs import (
    Predictions, check_predictions, evaluated_classes, ground_truth, masks_without_ignore, predictions_for,
)
from wsis.eval.subsets import restrict
from wsis.structures import Instances, RecordSet

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _gt_area(truth: Instances, rles: list | None) -> np.ndarray:
    """Mask pixel counts (of ``rles`` when given), box areas when there are no masks."""
    if rles is not None:
        return mask_ops.area(rles)
    if truth.has_masks and len(truth):
        return mask_ops.area(truth.rles())
    return np.prod(_xywh(truth.boxes)[:, 2:], axis=1)


def _annotations(gt: RecordSet, preds: Predictions, segm: bool) -> tuple[list[dict], list[dict]]:
    """(ground-truth annotations, detections) in COCO dict form, ids from 1."""
    gts: list[dict] = []
    dts: list[dict] = []
    for record in gt.records:
        truth = ground_truth(record, need_masks=segm)
        pred = predictions_for(record, preds)
        gt_rles, pred_rles = masks_without_ignore(record, truth, pred) if segm else ([], [])
        gt_area = _gt_area(truth, gt_rles if segm else None)
        ignored = record.crowd | record.difficult
        for i, (box, label) in enumerate(zip(_xywh(truth.boxes), truth.labels)):
            ann = {"id": len(gts) + 1, "image_id": record.image_id, "category_id": int(label),
                   "iscrowd": int(ignored[i]), "area": float(gt_area[i]), "bbox": box.tolist()}
            if segm:
                ann["segmentation"] = gt_rles[i]
            gts.append(ann)
        if segm:
            dt_boxes, dt_area = _xywh(mask_ops.to_bbox(pred_rles)), mask_ops.area(pred_rles)
        else:
            dt_boxes = _xywh(pred.boxes)
            dt_area = np.prod(dt_boxes[:, 2:], axis=1)
        for i, (box, label, score) in enumerate(zip(dt_boxes, pred.labels, pred.scores)):
            ann = {"id": len(dts) + 1, "image_id": record.image_id, "category_id": int(label),
                   "score": float(score), "area": float(dt_area[i]), "bbox": box.tolist(), "iscrowd": 0}
            if segm:
                ann["segmentation"] = pred_rles[i]
            dts.append(ann)
    return gts, dts


def _none_if_undefined(value: float) -> float | None:
    return None if value < 0 else float(value)


def _coco_eval(gt: RecordSet, preds: Predictions, category_ids: Iterable[int] | None, iou_type: str) -> dict:
    segm = iou_type == "segm"
    check_predictions(gt, preds, need_masks=segm)
    if category_ids is not None:
        gt, preds = restrict(gt, preds, category_ids)
    classes = evaluated_classes(gt, category_ids)
    images = [{"id": r.image_id, "height": r.height, "width": r.width, "file_name": r.file_name} for r in gt.records]
    categories = [{"id": c, "name": gt.categories.get(c, str(c))} for c in classes]
    gt_anns, dt_anns = _annotations(gt, preds, segm)
    evaluator = COCOeval(_coco(images, categories, gt_anns), _coco(images, categories, dt_anns), iou_type)
    evaluator.params.catIds = classes
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    result = {name: _none_if_undefined(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
    # precision: [iou thr, recall thr, class, area range (0 = all), max dets (2 = 100)]
    precision = evaluator.eval["precision"][:, :, :, 0, 2]
    per_class = {}
    for k, c in enumerate(classes):
        p = precision[:, :, k]
        per_class[c] = float(p[p > -1].mean()) if (p > -1).any() else None
    result["per_class_ap"] = per_class
    result["iou_type"] = iou_type
    return result


def coco_segm_eval(gt: RecordSet, preds: Predictions, category_ids: Iterable[int] | None = None) -> dict:
    """COCO mask AP/AR (``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, AR...) and per-class AP."""
    return _coco_eval(gt, preds, category_ids, "segm")


def coco_bbox_eval(gt: RecordSet, preds: Predictions, category_ids: Iterable[int] | None = None) -> dict:
    """The same on boxes (``iouType='bbox'``), for detection branches."""
    return _coco_eval(gt, preds, category_ids, "bbox")
