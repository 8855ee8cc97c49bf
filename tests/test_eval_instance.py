"""VOC-protocol mAP^r and ABO against answers computed by hand (1-pixel-high images, spans [a, b))."""
from __future__ import annotations

import json

import numpy as np
import pytest
from _eval_helpers import coco_val50, dataset, record, spans

from wsis.errors import InputError
from wsis.eval.instance import evaluate_instances
from wsis.structures import Instances


def test_greedy_best_match_without_fallback():
    # gt A=[0,10), B=[10,20), class 1. p1=[0,10) (.9) takes A. p2=[2,14) (.8): IoU(A)=8/14=.57,
    # IoU(B)=4/16=.25 -> its best, A, is taken -> FP, although B would pass t=.25.
    # t=.25: TP, FP -> precision 1, .5 at recall .5, .5 -> AP = .5 * 1 = .5 (fallback would give 1).
    gt = dataset(record(1, [(0, 10), (10, 20)], [1, 1]))
    preds = {1: spans([(0, 10), (2, 14)], [1, 1], 20, [0.9, 0.8])}
    res = evaluate_instances(gt, preds)
    assert res["per_class_ap"][1]["0.25"] == pytest.approx(0.5)
    assert res["mAP"]["0.5"] == pytest.approx(0.5)


def test_already_taken_instance_goes_to_the_higher_score():
    # gt A=[0,10), B=[10,20) class 1 (B never predicted): 2 positives.
    # p1=[0,6) (.9): IoU(A)=.6; p2=[0,10) (.8): IoU(A)=1.
    # t=.5: p1 TP, p2 FP (A taken) -> prec [1, .5], rec [.5, .5] -> AP = .5.
    # t=.7: p1 FP, p2 TP -> prec [0, .5], rec [0, .5] -> AP = .5 * .5 = .25.
    gt = dataset(record(1, [(0, 10), (10, 20)], [1, 1]))
    preds = {1: spans([(0, 6), (0, 10)], [1, 1], 20, [0.9, 0.8])}
    res = evaluate_instances(gt, preds)
    assert res["per_class_ap"][1]["0.5"] == pytest.approx(0.5)
    assert res["per_class_ap"][1]["0.7"] == pytest.approx(0.25)
    # ABO: A best .. max(.6, 1) = 1, B 0 -> .5
    assert res["abo"] == pytest.approx(0.5)


def test_ignore_pixels_are_removed_before_iou():
    # gt A=[0,8), B=[12,20) class 1, ignore band [8,12); pred=[2,13).
    # Without the band: IoU(A)=6/13=.46 -> FP at .5. With it the pred is [2,8)+[12,13) (7 px):
    # IoU(A)=6/9=.667 -> TP at .5 (AP = prec 1 * rec .5 = .5), FP at .7.
    # ABO: A .667, B: 1 / (8 + 7 - 1) = 1/14 -> (2/3 + 1/14) / 2 = 31/84.
    pred = {1: spans([(2, 13)], [1], 20, [0.9])}
    with_band = evaluate_instances(dataset(record(1, [(0, 8), (12, 20)], [1, 1], ignore=(8, 12))), pred)
    no_band = evaluate_instances(dataset(record(1, [(0, 8), (12, 20)], [1, 1])), pred)
    assert with_band["mAP"]["0.5"] == pytest.approx(0.5)
    assert with_band["mAP"]["0.7"] == 0.0
    assert no_band["mAP"]["0.5"] == 0.0
    assert with_band["abo"] == pytest.approx(31 / 84)


def test_crowd_regions_are_not_instances_and_excuse_predictions():
    # width 20. Instance A=[0,6) class 1; crowd [10,20) class 1; crowd [6,10) class 2.
    # p4=[6,10) class 1 (.95): only a class-2 crowd -> FP.
    # p3=[8,14) (.9): crowd overlap = 4 / 6 = .667 -> ignored at .25/.5, FP at .7/.75.
    # p2=[12,16) (.85): overlap 4/4 = 1 -> ignored. p1=[0,6) (.5): TP.
    # t=.5: FP, TP -> prec [0, .5], rec [0, 1] -> AP = .5.
    # t=.7: FP, FP, TP -> prec 1/3 at rec 1 -> AP = 1/3.
    gt = dataset(record(1, [(0, 6), (10, 20), (6, 10)], [1, 1, 2], crowd=[False, True, True]))
    preds = {1: spans([(6, 10), (8, 14), (12, 16), (0, 6)], [1, 1, 1, 1], 20, [0.95, 0.9, 0.85, 0.5])}
    res = evaluate_instances(gt, preds)
    assert res["per_class_ap"][1]["0.5"] == pytest.approx(0.5)
    assert res["per_class_ap"][1]["0.7"] == pytest.approx(1 / 3)
    assert list(res["per_class_ap"]) == [1]  # class 2 only has a crowd region: no positives
    assert res["abo"] == pytest.approx(1.0)  # only A counts
    assert res["counts"]["instances"] == 1 and res["counts"]["crowd"] == 2


def test_difficult_instances_are_ignored_like_voc_detection():
    # width 30: A=[0,10) difficult, B=[10,20), class 1 -> 1 positive.
    # p1=[0,10) (.9) matches A -> ignored; p2=[20,30) (.8) FP; p3=[10,20) (.7) TP.
    # FP, TP -> prec [0, .5], rec [0, 1] -> AP = .5.
    gt = dataset(record(1, [(0, 10), (10, 20)], [1, 1], width=30, difficult=[True, False]))
    preds = {1: spans([(0, 10), (20, 30), (10, 20)], [1, 1, 1], 30, [0.9, 0.8, 0.7])}
    res = evaluate_instances(gt, preds)
    assert res["mAP"]["0.5"] == pytest.approx(0.5)
    assert res["counts"]["positives"] == 1 and res["counts"]["difficult"] == 1


def test_class_with_gt_and_no_prediction_scores_zero():
    # class 1 predicted exactly (AP 1), class 2 has gt but no prediction (AP 0), class 3 has a
    # prediction but no gt (not averaged): mAP = (1 + 0) / 2.
    gt = dataset(record(1, [(0, 10), (10, 20)], [1, 2]))
    preds = {1: spans([(0, 10), (10, 20)], [1, 3], 20, [0.9, 0.8])}
    res = evaluate_instances(gt, preds)
    assert res["per_class_ap"] == {1: {k: 1.0 for k in ("0.25", "0.5", "0.7", "0.75")},
                                   2: {k: 0.0 for k in ("0.25", "0.5", "0.7", "0.75")}}
    assert res["mAP"]["0.5"] == pytest.approx(0.5)
    # ABO class-aware: A 1, B 0 -> .5; agnostic: the class-3 pred covers B exactly -> 1.
    assert res["abo"] == pytest.approx(0.5)
    assert res["abo_agnostic"] == pytest.approx(1.0)


def test_no_predictions_at_all():
    gt = dataset(record(1, [(0, 10)], [1]), record(2, [(5, 9)], [2]))
    for preds in ({}, {1: spans([], [], 20)}):
        res = evaluate_instances(gt, preds)
        assert res["mAP"] == {"0.25": 0.0, "0.5": 0.0, "0.7": 0.0, "0.75": 0.0}
        assert res["abo"] == 0.0 and res["abo_agnostic"] == 0.0
        assert res["counts"]["predictions"] == 0


def test_tied_scores_form_one_block_whatever_the_order():
    # Image a: gt [0,10), pred [10,20) FP. Image b: gt [0,10), pred [0,10) TP. Both scores .5.
    # As one block: tp 1, fp 1 -> prec .5 at rec .5 -> AP .25.
    # Ordering the tie TP-first would give 1 * .5 = .5; FP-first gives .25.
    a, b = record(1, [(0, 10)], [1]), record(2, [(0, 10)], [1])
    preds = {1: spans([(10, 20)], [1], 20, [0.5]), 2: spans([(0, 10)], [1], 20, [0.5])}
    for order in ((a, b), (b, a)):
        assert evaluate_instances(dataset(*order), preds)["mAP"]["0.5"] == pytest.approx(0.25)
    swapped = {2: preds[2], 1: preds[1]}
    assert evaluate_instances(dataset(b, a), swapped)["mAP"]["0.5"] == pytest.approx(0.25)


def test_two_images_accumulate_by_score():
    # Image 1 (gt [0,10)): p1 .9 TP, p2 .6 FP. Image 2 (gt [0,10)): p3 .8 FP, p4 .7 TP.
    # Ranked TP, FP, TP, FP: prec 1, .5, 2/3, .5; rec .5, .5, 1, 1.
    # AP = .5 * 1 + .5 * 2/3 = 5/6.
    gt = dataset(record(1, [(0, 10)], [1]), record(2, [(0, 10)], [1]))
    preds = {
        1: spans([(0, 10), (12, 20)], [1, 1], 20, [0.9, 0.6]),
        2: spans([(12, 20), (0, 9)], [1, 1], 20, [0.8, 0.7]),
    }
    res = evaluate_instances(gt, preds)
    assert res["mAP"]["0.5"] == pytest.approx(5 / 6)
    # p4 IoU = .9 -> still TP at .75; ABO = (1 + .9) / 2
    assert res["mAP"]["0.75"] == pytest.approx(5 / 6)
    assert res["abo"] == pytest.approx(0.95)


def test_category_ids_restricts_both_sides():
    gt = dataset(record(1, [(0, 10), (10, 20)], [1, 2]))
    preds = {1: spans([(0, 10)], [1], 20, [0.9])}
    res = evaluate_instances(gt, preds, category_ids=[1])
    assert res["mAP"]["0.5"] == 1.0 and res["abo"] == 1.0
    json.dumps(res)


def test_bad_predictions_raise_input_error():
    gt = dataset(record(1, [(0, 10)], [1]))
    with pytest.raises(InputError, match="not in the ground truth"):
        evaluate_instances(gt, {7: spans([(0, 10)], [1], 20)})
    with pytest.raises(InputError, match="size"):
        evaluate_instances(gt, {1: spans([(0, 10)], [1], 30)})


def test_accepts_mask_arrays():
    gt = dataset(record(1, [(0, 10)], [1]))
    arr = np.zeros((1, 1, 20), bool)
    arr[0, 0, :5] = True
    res = evaluate_instances(gt, {1: Instances((1, 20), labels=[1], scores=[0.3], masks=arr)})
    assert res["abo"] == pytest.approx(0.5)
    assert res["mAP"]["0.5"] == 1.0 and res["mAP"]["0.7"] == 0.0


def test_real_coco_val50_ground_truth_as_predictions():
    # Every non-crowd instance predicted exactly: each is its own best match -> AP 1 at every
    # threshold, ABO 1; the 3 crowd regions are not instances.
    gt, _ = coco_val50()
    preds = {r.image_id: r.gt.select(np.nonzero(~r.crowd)[0]) for r in gt.records}
    res = evaluate_instances(gt, preds)
    assert res["mAP"] == {k: pytest.approx(1.0) for k in ("0.25", "0.5", "0.7", "0.75")}
    assert res["abo"] == pytest.approx(1.0)
    assert res["counts"]["instances"] == 360 and res["counts"]["crowd"] == 3
