"""Tiny hand-drawn ground truth and predictions for the evaluator tests.

Most cases live in 1-pixel-high images so that a mask is a run of columns ``[start, stop)`` and
IoUs can be computed on paper: IoU([0,10), [0,6)) = 6 / 10.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from wsis import masks as mask_ops
from wsis.structures import ImageRecord, Instances, RecordSet

Span = tuple[int, int]


def span_mask(span: Span, width: int) -> np.ndarray:
    m = np.zeros((1, width), bool)
    m[0, span[0]:span[1]] = True
    return m


def spans(spans_: Sequence[Span], labels: Sequence[int], width: int, scores: Sequence[float] | None = None) -> Instances:
    masks = np.stack([span_mask(s, width) for s in spans_]) if spans_ else np.zeros((0, 1, width), bool)
    return Instances((1, width), labels=list(labels), scores=scores, masks=mask_ops.encode_many(masks))


def record(
    image_id: int,
    gt_spans: Sequence[Span],
    labels: Sequence[int],
    width: int = 20,
    crowd: Sequence[bool] | None = None,
    difficult: Sequence[bool] | None = None,
    ignore: Span | None = None,
) -> ImageRecord:
    return ImageRecord(
        image_id, Path(f"img{image_id}.jpg"), width, 1, tags=tuple(labels),
        gt=spans(gt_spans, labels, width), crowd=crowd, difficult=difficult,
        ignore=None if ignore is None else mask_ops.encode(span_mask(ignore, width)),
    )


def dataset(*records: ImageRecord, categories: dict[int, str] | None = None) -> RecordSet:
    return RecordSet(list(records), categories or {1: "cat", 2: "dog", 3: "bird"}, "hand")


COCO_VAL50 = Path(__file__).parents[2] / "shared" / "data" / "coco-val50" / "annotations" / "instances_val2017.json"


def coco_val50() -> tuple[RecordSet, dict]:
    """coco-val50 from /work/shared (read with json + wsis.masks), and its raw JSON; skips if absent."""
    if not COCO_VAL50.exists():
        pytest.skip(f"real data not found at {COCO_VAL50} (see BENCHMARK.md)")
    data = json.loads(COCO_VAL50.read_text())
    anns: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    records = []
    for im in data["images"]:
        mine = anns.get(im["id"], [])
        h, w = im["height"], im["width"]
        rles = [mask_ops.segmentation_to_rle(a["segmentation"], h, w) for a in mine]
        boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in mine)], np.float32)
        gt = Instances((h, w), boxes.reshape(-1, 4), [a["category_id"] for a in mine], None, rles)
        records.append(ImageRecord(im["id"], Path(im["file_name"]), w, h, tags=[a["category_id"] for a in mine],
                                   gt=gt, crowd=[a["iscrowd"] for a in mine]))
    return RecordSet(records, {c["id"]: c["name"] for c in data["categories"]}, "coco-val50"), data
