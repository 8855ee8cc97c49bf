"""Box AP and CorLoc on hand-drawn boxes (1-pixel-high images: a box is a column span)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _eval_helpers import dataset, record, spans

from wsis.eval.detection import box_crowd_overlap, corloc, detection_ap
from wsis.structures import ImageRecord, Instances


def boxes(xyxy, labels, scores, size=(100, 100)):
    return Instances(size, boxes=np.array(xyxy, np.float32), labels=labels, scores=scores)


def box_record(image_id, xyxy, labels, tags=None, difficult=None, crowd=None, size=(100, 100)):
    return ImageRecord(image_id, Path(f"{image_id}.jpg"), size[1], size[0], tags=tags or labels,
                       gt=boxes(xyxy, labels, None, size), difficult=difficult, crowd=crowd)


def test_detection_ap_greedy_difficult_and_accumulation():
    # Image 1: A=[0,0,10,10] difficult, B=[20,0,30,10] (class 1). Image 2: C=[0,0,10,10] (class 1).
    # Positives: B, C = 2.
    # p1 .9 = A exactly -> ignored (difficult). p2 .8 = [20,0,26,10] on B: IoU 60/100 -> TP.
    # p3 .7 = B exactly -> B taken, FP (no fallback). p4 .6 (image 2) = [0,0,10,4]: IoU .4 -> FP at .5.
    # Ranked TP, FP, FP: prec 1, .5, 1/3; rec .5, .5, .5 -> AP = .5.
    # At .3: p4 is TP -> TP, FP, TP: prec 1, .5, 2/3; rec .5, .5, 1 -> AP = .5 + .5 * 2/3 = 5/6.
    gt = dataset(box_record(1, [[0, 0, 10, 10], [20, 0, 30, 10]], [1, 1], difficult=[True, False]),
                 box_record(2, [[0, 0, 10, 10]], [1]))
    preds = {1: boxes([[0, 0, 10, 10], [20, 0, 26, 10], [20, 0, 30, 10]], [1, 1, 1], [0.9, 0.8, 0.7]),
             2: boxes([[0, 0, 10, 4]], [1], [0.6])}
    assert detection_ap(gt, preds)["mAP"] == pytest.approx(0.5)
    res = detection_ap(gt, preds, iou_threshold=0.3)
    assert res["per_class_ap"][1] == pytest.approx(5 / 6)
    assert res["positives"] == 2


def test_detection_ap_crowd_box_excuses_and_missing_class_scores_zero():
    # Crowd box [50,50,100,100] class 1; pred [60,60,80,80] lies inside it (overlap 1) -> ignored.
    # Class 1 instance [0,0,10,10] found exactly (AP 1); class 2 instance never predicted (AP 0).
    gt = dataset(box_record(1, [[0, 0, 10, 10], [50, 50, 100, 100], [20, 20, 30, 30]], [1, 1, 2],
                            crowd=[False, True, False]))
    preds = {1: boxes([[60, 60, 80, 80], [0, 0, 10, 10]], [1, 1], [0.9, 0.5])}
    res = detection_ap(gt, preds)
    assert res["per_class_ap"] == {1: 1.0, 2: 0.0}
    assert res["mAP"] == pytest.approx(0.5)


def test_box_crowd_overlap_is_intersection_over_prediction_area():
    # pred 10x10 box, crowd covers its right 4 columns -> 40 / 100.
    assert box_crowd_overlap([[0, 0, 10, 10]], [[6, 0, 50, 50]])[0, 0] == pytest.approx(0.4)


def test_corloc_top_box_per_tagged_image():
    # Class 1 tagged in images 1, 2, 3; class 2 in image 1.
    # Image 1: top class-1 box (.9) = gt -> hit; class-2 top box (.8) IoU 0 -> miss (even though a
    #   lower class-2 box is exact). Image 2: top class-1 box IoU 25/100 -> miss. Image 3: no box -> miss.
    # Class 1: 1/3, class 2: 0/1 -> CorLoc = (1/3 + 0) / 2 = 1/6.
    gt = dataset(box_record(1, [[0, 0, 10, 10], [50, 50, 60, 60]], [1, 2]),
                 box_record(2, [[0, 0, 10, 10]], [1]), box_record(3, [[0, 0, 10, 10]], [1]))
    preds = {1: boxes([[0, 0, 10, 10], [0, 0, 5, 5], [80, 80, 90, 90], [50, 50, 60, 60]], [1, 1, 2, 2], [0.9, 0.3, 0.8, 0.2]),
             2: boxes([[0, 0, 5, 5], [0, 0, 10, 10]], [1, 1], [0.7, 0.1])}
    res = corloc(gt, preds)
    assert res["per_class"] == {1: pytest.approx(1 / 3), 2: 0.0}
    assert res["corloc"] == pytest.approx(1 / 6)
    assert res["images_per_class"] == {1: 3, 2: 1}
    assert corloc(gt, preds, category_ids=[1])["corloc"] == pytest.approx(1 / 3)


def test_mask_predictions_are_scored_by_their_boxes():
    # Spans give boxes [0,0,10,1] and [0,0,6,1]: IoU .6.
    gt = dataset(record(1, [(0, 10)], [1]))
    assert detection_ap(gt, {1: spans([(0, 6)], [1], 20, [0.5])})["mAP"] == 1.0
    assert detection_ap(gt, {1: spans([(0, 6)], [1], 20, [0.5])}, iou_threshold=0.7)["mAP"] == 0.0
