"""Per-class thresholds from held-out scores, tag AP and threshold precision/recall."""
from __future__ import annotations

import numpy as np
import pytest

from wsis.cues.calibration import best_f1_threshold, calibrate_thresholds, kfold_indices
from wsis.eval.tags import tag_ap, tag_map, threshold_precision_recall


def test_kfold_covers_every_index_once():
    folds = kfold_indices(10, 3, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(10))
    assert [len(f) for f in folds] == [4, 3, 3]
    with pytest.raises(ValueError):
        kfold_indices(2, 3)


def test_best_f1_threshold_by_hand():
    # scores 0.9(+) 0.8(-) 0.7(+) 0.1(-): t=0.9 -> F1 2/3; t=0.7 -> P 2/3 R 1 -> F1 0.8; t=0.1 -> 2/3
    t, f = best_f1_threshold(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0]))
    assert (t, f) == (0.7, pytest.approx(0.8))
    assert best_f1_threshold(np.array([0.5]), np.array([0]))[0] == float("inf")


def test_rare_classes_get_the_pooled_fallback():
    scores = np.array([[0.9, 0.3], [0.8, 0.6], [0.7, 0.2], [0.1, 0.1]])
    targets = np.array([[1, 0], [1, 1], [1, 0], [0, 0]])
    cal = calibrate_thresholds(scores, targets, min_positives=2)
    assert cal.calibrated.tolist() == [True, False]
    assert cal.thresholds[0] == 0.7  # all three positives, no negative passes
    assert cal.thresholds[1] == cal.fallback == 0.6  # pooled over the rare class: its one positive


def test_tag_ap_and_precision_recall_by_hand():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.3]])
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    # class 0: ranks + - + -> AP = (1 + 2/3) / 2; class 1: its one positive ranked first -> AP 1
    np.testing.assert_allclose(tag_ap(scores, targets), [(1 + 2 / 3) / 2, 1.0])
    assert tag_map(scores, targets) == (pytest.approx((5 / 6 + 1) / 2), 2)
    pr = threshold_precision_recall(scores, targets, np.array([0.5, 0.5]))
    assert (pr["passed"], pr["true_positives"], pr["positives"]) == (3, 2, 3)
    assert tag_ap(scores, np.zeros((3, 2)))[0] != tag_ap(scores, np.zeros((3, 2)))[0]  # NaN without positives
