"""The combined report: JSON-serialisable, keyed by names, tables carrying the numbers; subsets."""
from __future__ import annotations

import json

import pytest
from _eval_helpers import dataset, record, spans

from wsis.errors import InputError
from wsis.eval import VOC20_IN_COCO, evaluate, format_table, restrict, voc20_ids

CATEGORIES = {1: "person", 3: "car", 11: "fire hydrant"}


def _case():
    # person: gt [0,10) found exactly (AP 1, ABO 1); car: gt [10,20), pred [10,14) -> IoU .4:
    # AP@0.5 0, AP@0.25 1, ABO .4; fire hydrant (not VOC): gt [0,5) in image 2, pred exact.
    gt = dataset(record(1, [(0, 10), (10, 20)], [1, 3]), record(2, [(0, 5)], [11]), categories=CATEGORIES)
    preds = {1: spans([(0, 10), (10, 14)], [1, 3], 20, [0.9, 0.8]), 2: spans([(0, 5)], [11], 20, [0.7])}
    return gt, preds


def test_report_is_json_and_holds_the_hand_computed_numbers():
    gt, preds = _case()
    rep = evaluate(gt, preds, detection=True, semantic=True)
    text = json.dumps(rep, allow_nan=False)
    assert json.loads(text)["voc"]["per_class"]["car"]["ABO"] == pytest.approx(0.4)
    assert rep["voc"]["mAP"]["0.5"] == pytest.approx(2 / 3)  # (1 + 0 + 1) / 3
    assert rep["voc"]["per_class"]["person"]["AP@0.5"] == 1.0
    assert rep["voc"]["abo"] == pytest.approx(2.4 / 3)
    assert set(rep) >= {"voc", "coco", "detection", "semantic"}
    table = format_table(rep)
    assert "66.7" in table  # mAP^r@0.5
    assert "80.0" in table  # ABO = 2.4 / 3
    car_row = next(line for line in table.splitlines() if line.startswith("car"))
    assert car_row.split()[1:3] == ["0.0", "40.0"]


def test_voc20_subset_drops_other_classes():
    gt, preds = _case()
    rep = evaluate(gt, preds, subset="voc20", coco=False)
    assert set(rep["voc"]["per_class"]) == {"person", "car"}
    assert rep["voc"]["mAP"]["0.5"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert "coco" not in rep


def test_unknown_subset_is_an_input_error():
    gt, preds = _case()
    with pytest.raises(InputError, match="unknown subset"):
        evaluate(gt, preds, subset="voc21")


def test_voc20_ids_accepts_coco_and_voc_names():
    assert len(VOC20_IN_COCO) == 20
    voc_names = {i + 1: n for i, n in enumerate(
        ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
         "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"])}
    assert voc20_ids(voc_names) == list(range(1, 21))
    assert voc20_ids(CATEGORIES) == [1, 3]


def test_restrict_keeps_images_and_flags_in_step():
    gt = dataset(record(1, [(0, 10), (10, 20)], [1, 2], crowd=[False, True], difficult=[True, False]))
    preds = {1: spans([(0, 10), (10, 20)], [2, 1], 20, [0.9, 0.8])}
    sub_gt, sub_preds = restrict(gt, preds, [1])
    r = sub_gt.records[0]
    assert list(r.gt.labels) == [1] and list(r.difficult) == [True] and list(r.crowd) == [False]
    assert r.tags == (1,) and sub_gt.categories == {1: "cat"}
    assert list(sub_preds[1].labels) == [1] and sub_preds[1].scores[0] == pytest.approx(0.8)
