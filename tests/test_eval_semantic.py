"""Label maps from instances and semantic mIoU, by hand on 1-pixel-high images."""
from __future__ import annotations

import numpy as np
import pytest
from _eval_helpers import dataset, record, spans

from wsis.eval.semantic import instances_to_semantic, semantic_miou


def test_label_map_takes_highest_score_and_first_among_ties():
    # [0,6) class 1 (.9) over [4,12) class 2 (.5): pixels 4,5 -> class 1.
    # [12,14) class 3 (.5) and [13,16) class 1 (.5) tie: pixel 13 -> class 3 (first in input).
    inst = spans([(0, 6), (4, 12), (12, 14), (13, 16)], [1, 2, 3, 1], 20, [0.9, 0.5, 0.5, 0.5])
    out = instances_to_semantic(inst, {1: 1, 2: 2, 3: 3})
    expected = np.array([1] * 6 + [2] * 6 + [3, 3, 1, 1] + [0] * 4)
    np.testing.assert_array_equal(out[0], expected)
    # labels outside the map are skipped: without class 3, pixel 12 is background, 13 class 1.
    np.testing.assert_array_equal(instances_to_semantic(inst, {1: 1, 2: 2})[0, 12:14], [0, 1])


def test_miou_excludes_ignore_and_crowd_pixels():
    # gt: A=[0,8) class 1, B=[10,16) class 2, crowd [16,20) class 1, ignore [8,10).
    # pred map: [0,6)=1 (.9 beats .5), [6,12)=2, [12,14)=1 (.95), rest 0.
    # Valid pixels [0,8) + [10,16). Confusion (gt -> pred): 1->1: 6, 1->2: 2, 2->2: 2, 2->1: 2, 2->0: 2.
    # IoU bg = 0 / 2 = 0; class 1 = 6 / (8 + 8 - 6) = .6; class 2 = 2 / (6 + 4 - 2) = .25;
    # class 3 absent from both -> not averaged. mIoU = (0 + .6 + .25) / 3; accuracy = 8 / 14.
    gt = dataset(record(1, [(0, 8), (10, 16), (16, 20)], [1, 2, 1], crowd=[False, False, True], ignore=(8, 10)))
    preds = {1: spans([(0, 6), (4, 12), (12, 14)], [1, 2, 1], 20, [0.9, 0.5, 0.95])}
    res = semantic_miou(gt, preds)
    assert res["per_class_iou"] == {1: pytest.approx(0.6), 2: pytest.approx(0.25), 3: None}
    assert res["background_iou"] == 0.0
    assert res["miou"] == pytest.approx(0.85 / 3)
    assert res["pixel_accuracy"] == pytest.approx(8 / 14)


def test_miou_without_predictions():
    # gt [0,10) class 1 in 20 px: bg IoU = 10 / 20, class 1 IoU 0 -> mIoU .25.
    res = semantic_miou(dataset(record(1, [(0, 10)], [1])), {})
    assert res["miou"] == pytest.approx(0.25)
    assert res["per_class_iou"][1] == 0.0
