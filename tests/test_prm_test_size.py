"""``test.image_size`` (issue 11, not in the paper): PRM localises at a larger input than it was
trained at, while the class decision stays at the training size, where the thresholds were calibrated."""
from __future__ import annotations

import numpy as np
import torch
from test_peak_backprop import _random_model

from wsis.cues.peaks import scores_and_peaks
from wsis.data.torch_data import resize_square
from wsis.methods.prm import PRMMethodConfig, PRMPredictor, PRMTestConfig

torch.set_num_threads(1)


def _predictor(tmp_path, test_size: int | None, thresholds=None) -> PRMPredictor:
    model = _random_model(5)
    model.backbone.normalize = lambda x: x
    cfg = PRMMethodConfig(device="cpu", test=PRMTestConfig(max_peaks_per_class=3, image_size=test_size))
    cfg.data.image_size = 32
    return PRMPredictor(model, cfg, [10, 20, 30], {10: "a", 20: "b", 30: "c"}, tmp_path, thresholds)


def _scores(model, image: np.ndarray, size: int) -> torch.Tensor:
    with torch.no_grad():
        return scores_and_peaks(model, model.crm(resize_square(image, size)[None]))[0][0]


def test_classes_are_decided_at_the_training_size_and_localised_at_the_test_size(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    probe = _predictor(tmp_path, 64)
    at_train = _scores(probe.model, image, 32)
    at_test = _scores(probe.model, image, 64)
    # each threshold halfway between the class's two scores: a class passes at exactly one of the
    # two sizes, so the decision says which size made it
    assert not torch.isclose(at_train[:2], at_test[:2]).any()
    halfway = (at_train + at_test) / 2
    train_pass = (at_train[:2] > at_test[:2]).tolist()
    thresholds = [float(halfway[0]), float(halfway[1]), float(max(at_train[2], at_test[2]) + 1.0)]
    pred = _predictor(tmp_path, 64, thresholds)

    allowed = pred.class_decision(image)
    assert allowed.tolist() == train_pass + [False]
    x = pred.prepare(image)
    assert x.shape == (1, 3, 64, 64)
    classes, prms, maps = pred.peak_responses(x, allowed)
    assert set(classes.tolist()) <= {c for c in range(2) if train_pass[c]}
    assert prms.shape[-2:] == (64, 64) and maps.shape == (3, 64, 64)
    # the peaks are the 64-px CRM's, at most 3 per allowed class
    for c in set(classes.tolist()):
        assert (classes == c).sum() <= 3


def test_without_a_test_size_nothing_changes(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    pred = _predictor(tmp_path, None, [-1e9, -1e9, -1e9])
    assert pred.class_decision(image) is None
    assert pred.prepare(image).shape == (1, 3, 32, 32)
    same = _predictor(tmp_path, 32, [-1e9, -1e9, -1e9])  # the training size named explicitly
    assert same.class_decision(image) is None
    a = pred.peak_responses(pred.prepare(image))
    b = same.peak_responses(same.prepare(image))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
