"""Class subsets: the 20 PASCAL VOC classes inside COCO, and dropping other classes before scoring."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping

import numpy as np

from wsis.structures import ImageRecord, Instances, RecordSet

VOC20_IN_COCO: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "boat", "bird", "cat",
    "dog", "horse", "sheep", "cow", "bottle", "chair", "couch", "potted plant", "dining table", "tv",
)

# VOC spells six classes differently from COCO.
VOC_TO_COCO_NAME: dict[str, str] = {
    "aeroplane": "airplane",
    "motorbike": "motorcycle",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
}


def voc20_ids(categories: Mapping[int, str]) -> list[int]:
    """Ids of the VOC classes in ``categories``, whether named the COCO or the VOC way."""
    wanted = set(VOC20_IN_COCO)
    return sorted(int(cid) for cid, name in categories.items() if VOC_TO_COCO_NAME.get(name, name) in wanted)


def _keep_instances(inst: Instances, keep: np.ndarray) -> Instances:
    return inst.select(np.nonzero(keep)[0])


def _restrict_record(record: ImageRecord, ids: np.ndarray) -> ImageRecord:
    tags = tuple(t for t in record.tags if t in set(ids.tolist()))
    if record.gt is None:
        return replace(record, tags=tags)
    keep = np.isin(record.gt.labels, ids)
    return replace(
        record,
        tags=tags,
        gt=_keep_instances(record.gt, keep),
        crowd=record.crowd[keep],
        difficult=record.difficult[keep],
    )


def restrict(
    gt: RecordSet, preds: Mapping[int, Instances], category_ids: Iterable[int]
) -> tuple[RecordSet, dict[int, Instances]]:
    """Ground truth and predictions with every class outside ``category_ids`` dropped (images kept)."""
    ids = np.asarray(sorted({int(c) for c in category_ids}), np.int64)
    records = [_restrict_record(r, ids) for r in gt.records]
    categories = {c: n for c, n in gt.categories.items() if int(c) in set(ids.tolist())}
    kept = {i: _keep_instances(p, np.isin(p.labels, ids)) for i, p in preds.items()}
    return RecordSet(records, categories, gt.name), kept
