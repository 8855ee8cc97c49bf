"""COCO protocol through pycocotools on hand cases whose COCOeval answer follows from its rules."""
from __future__ import annotations

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
from _eval_helpers import COCO_VAL50, coco_val50, dataset, record, spans
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from wsis import masks as mask_ops
from wsis.eval.coco_protocol import STAT_NAMES, coco_bbox_eval, coco_segm_eval
from wsis.structures import Instances, RecordSet


def test_perfect_predictions_score_one():
    gt = dataset(record(1, [(0, 10), (10, 20)], [1, 2]), record(2, [(3, 17)], [1]))
    preds = {1: spans([(0, 10), (10, 20)], [1, 2], 20, [0.9, 0.8]), 2: spans([(3, 17)], [1], 20, [0.7])}
    for evaluate in (coco_segm_eval, coco_bbox_eval):
        res = evaluate(gt, preds)
        assert res["AP"] == pytest.approx(1.0) and res["AP50"] == pytest.approx(1.0)
        assert res["per_class_ap"][1] == pytest.approx(1.0) and res["per_class_ap"][2] == pytest.approx(1.0)
        # every object is small (< 32^2 px): no medium/large ground truth -> undefined, not 0
        assert res["APs"] == pytest.approx(1.0) and res["APm"] is None and res["APl"] is None
        assert res["per_class_ap"][3] is None  # no gt of class 3
        json.dumps(res)


def test_one_match_at_iou_062_passes_three_of_ten_thresholds():
    # gt [0,50), pred [0,31): IoU .62 >= .50, .55, .60 only -> AP = 3/10, AP50 = 1, AP75 = 0.
    gt = dataset(record(1, [(0, 50)], [1], width=50))
    res = coco_segm_eval(gt, {1: spans([(0, 31)], [1], 50, [0.9])})
    assert res["AP"] == pytest.approx(0.3)
    assert res["AP50"] == pytest.approx(1.0) and res["AP75"] == pytest.approx(0.0)


def test_false_positive_ranked_first_halves_precision():
    # pred .9 misses, pred .8 is exact: precision .5 at recall 1; COCO's interpolated precision is
    # .5 at every recall threshold and every IoU threshold -> AP = .5.
    gt = dataset(record(1, [(0, 10)], [1]))
    res = coco_segm_eval(gt, {1: spans([(12, 20), (0, 10)], [1, 1], 20, [0.9, 0.8])})
    assert res["AP"] == pytest.approx(0.5)


def test_difficult_and_ignore_band():
    # width 30: A=[0,10) difficult, B=[10,20); ignore [20,24). pred [0,10) (.9) covers A only ->
    # ignored; pred [10,24) (.8): minus the band it is [10,20) = B exactly -> AP 1.
    gt = dataset(record(1, [(0, 10), (10, 20)], [1, 1], width=30, difficult=[True, False], ignore=(20, 24)))
    res = coco_segm_eval(gt, {1: spans([(0, 10), (10, 24)], [1, 1], 30, [0.9, 0.8])})
    assert res["AP"] == pytest.approx(1.0)


def test_no_predictions_gives_zero_for_classes_with_gt():
    gt = dataset(record(1, [(0, 10), (10, 20)], [1, 2]))
    res = coco_segm_eval(gt, {})
    assert res["AP"] == 0.0 and res["AP50"] == 0.0
    assert res["per_class_ap"] == {1: 0.0, 2: 0.0, 3: None}
    assert coco_segm_eval(gt, {}, category_ids=[1])["per_class_ap"] == {1: 0.0}


def _eroded_predictions(gt: RecordSet) -> dict[int, Instances]:
    """Each non-crowd gt mask eroded by a 9x9 square, scored by a fixed hash of its order."""
    preds = {}
    for k, r in enumerate(gt.records):
        keep = np.nonzero(~r.crowd)[0]
        masks = r.gt.select(keep).mask_array().astype(np.uint8)
        eroded = np.stack([cv2.erode(m, np.ones((9, 9), np.uint8)) for m in masks]) if len(masks) else masks
        scores = ((np.arange(len(keep)) * 37 + k * 11) % 100) / 100.0
        preds[r.image_id] = Instances(r.size, labels=r.gt.labels[keep], scores=scores,
                                      masks=mask_ops.encode_many(eroded.astype(bool)))
    return preds


def test_real_coco_val50_ground_truth_as_predictions_scores_one():
    gt, _ = coco_val50()
    preds = {r.image_id: r.gt.select(np.nonzero(~r.crowd)[0]) for r in gt.records}
    res = coco_segm_eval(gt, preds)
    assert res["AP"] == pytest.approx(1.0)
    defined = [v for v in res["per_class_ap"].values() if v is not None]
    assert len(defined) == len({int(c) for r in gt.records for c in r.gt.labels[~r.crowd]})


def test_in_memory_objects_match_pycocotools_reading_the_files(tmp_path):
    # The official flow (COCO(file) + loadRes(file)) on the same eroded predictions must give the
    # same 12 numbers as our in-memory construction.
    gt, data = coco_val50()
    preds = _eroded_predictions(gt)
    results = [{"image_id": i, "category_id": int(c), "score": float(s), "segmentation": m}
               for i, p in preds.items() for c, s, m in zip(p.labels, p.scores, p.rles())]
    (tmp_path / "res.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(COCO_VAL50))
        official = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "res.json")), "segm")
        official.evaluate()
        official.accumulate()
        official.summarize()
    ours = coco_segm_eval(gt, preds)
    assert 0.05 < ours["AP"] < 0.95  # a real, non-trivial score
    for name, value in zip(STAT_NAMES, official.stats):
        assert ours[name] == (None if value < 0 else pytest.approx(value, abs=1e-9)), name
