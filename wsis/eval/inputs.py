"""Checks and look-ups shared by the evaluators: predictions against the ground truth they score."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from wsis import masks as mask_ops

from wsis.errors import InputError
from wsis.masks import RLE
from wsis.structures import ImageRecord, Instances, RecordSet

Predictions = Mapping[int, Instances]


def check_predictions(gt: RecordSet, preds: Predictions, *, need_masks: bool) -> None:
    """Raise :class:`InputError` for predictions of unknown images, wrong sizes or missing masks."""
    sizes = {r.image_id: r.size for r in gt.records}
    unknown = sorted(int(i) for i in preds if int(i) not in sizes)
    if unknown:
        raise InputError("predictions", f"{len(unknown)} image id(s) not in the ground truth {gt.name!r}: {unknown[:5]}")
    for image_id, inst in preds.items():
        if len(inst) == 0:
            continue
        if tuple(inst.image_size) != sizes[int(image_id)]:
            raise InputError("predictions", f"image {image_id}: predictions of size {inst.image_size}, image is {sizes[int(image_id)]}")
        if need_masks and not inst.has_masks:
            raise InputError("predictions", f"image {image_id}: predictions have no masks")


def empty_like(record: ImageRecord) -> Instances:
    return Instances(record.size, masks=[])


def predictions_for(record: ImageRecord, preds: Predictions) -> Instances:
    """The record's predictions, or an empty set when the image has none."""
    inst = preds.get(record.image_id)
    return empty_like(record) if inst is None else inst


def ground_truth(record: ImageRecord, *, need_masks: bool) -> Instances:
    """The record's gt (empty when it has none); :class:`InputError` when masks are needed but absent."""
    if record.gt is None:
        return empty_like(record)
    if need_masks and len(record.gt) and not record.gt.has_masks:
        raise InputError(record.path, "ground truth has no instance masks")
    return record.gt


def evaluated_classes(gt: RecordSet, category_ids) -> list[int]:
    """``category_ids`` if given, else every category of the dataset (and any stray gt label)."""
    if category_ids is not None:
        return sorted(int(c) for c in category_ids)
    labels = {int(c) for c in gt.categories}
    for r in gt.records:
        if r.gt is not None:
            labels.update(int(x) for x in np.unique(r.gt.labels))
    return sorted(labels)


def without_region(rles: Sequence[RLE], keep: RLE) -> list[RLE]:
    """Every mask intersected with ``keep`` (RLE merges in C, no decoding)."""
    return [mask_utils.merge([r, keep], intersect=True) for r in rles]


def masks_without_ignore(record: ImageRecord, gt: Instances, pred: Instances) -> tuple[list[RLE], list[RLE]]:
    """gt and predicted RLEs with the record's ignore region (VOC 255 band) removed from each."""
    gt_rles = gt.rles() if len(gt) else []
    pred_rles = pred.rles() if len(pred) else []
    if record.ignore is not None:
        keep = mask_ops.encode(~mask_ops.decode(record.ignore))
        gt_rles, pred_rles = without_region(gt_rles, keep), without_region(pred_rles, keep)
    return gt_rles, pred_rles


def count_positives(gt: RecordSet, classes: Iterable[int]) -> dict[int, int]:
    """Instances per class that a prediction must find: neither crowd nor VOC difficult."""
    counts = {int(c): 0 for c in classes}
    for r in gt.records:
        if r.gt is None:
            continue
        labels = r.gt.labels[~r.crowd & ~r.difficult]
        for c, n in zip(*np.unique(labels, return_counts=True)):
            counts[int(c)] = counts.get(int(c), 0) + int(n)
    return counts
