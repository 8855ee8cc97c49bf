"""Frozen-backbone feature cache and the class layer trained on cached features."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from wsis.cues.frozen_head import HeadConfig, class_scores, train_class_layer
from wsis.engine.feature_cache import FeatureCache


class _Mean(nn.Module):
    """A stand-in backbone: 2x2 average pooling of the normalised image (stride 2, 3 channels)."""

    name = "mean2"
    stride = 2
    out_channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.calls = 0

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return nn.functional.avg_pool2d(x, 2) * self.scale


def test_cache_keys_by_content_and_flip_and_reads_back(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    img[:, :2, 0] = 255  # left half red
    a, b = tmp_path / "a.png", tmp_path / "copy.png"
    Image.fromarray(img).save(a)
    Image.fromarray(img).save(b)
    net = _Mean()
    cache = FeatureCache(tmp_path / "cache", net, size=4)
    plain = cache.get(a)
    assert plain.shape == (3, 2, 2) and plain[0, :, 0].tolist() == [1, 1] and plain[0, :, 1].tolist() == [0, 0]
    flipped = cache.get(a, flip=True)
    assert flipped[0, :, 0].tolist() == [0, 0] and flipped[0, :, 1].tolist() == [1, 1]
    assert torch.equal(cache.get(b), plain)  # same bytes, other name: read from disk
    assert net.calls == 2 and cache.computed == 2
    other = FeatureCache(tmp_path / "cache", _Mean(), size=4)
    assert torch.equal(other.get(a), plain) and other.computed == 0
    with torch.no_grad():
        net.scale.fill_(2.0)  # other weights: another folder
    assert FeatureCache(tmp_path / "cache", net, size=4).folder != cache.folder


def test_class_layer_learns_which_channel_marks_each_class():
    # class 0 present <=> channel 0 has a bright spot; class 1 <=> channel 1
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(0, 0.1, (40, 2, 4, 4)).astype(np.float32))
    targets = torch.from_numpy(rng.random((40, 2)) < 0.5).float()
    for i in range(40):
        for c in range(2):
            if targets[i, c]:
                feats[i, c, rng.integers(4), rng.integers(4)] += 3.0
    layer, losses = train_class_layer(feats, targets, 2, HeadConfig(epochs=60, lr=0.5), sub_pixel_factor=1)
    assert losses[-1] < losses[0] / 10
    scores = class_scores(layer, feats, sub_pixel_factor=1).detach()
    for c in range(2):
        assert scores[targets[:, c] == 1, c].min() > scores[targets[:, c] == 0, c].max()
    # a prior start is kept where the data say nothing (no positive and no gradient pull away)
    prior = (torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2))
    layer2, _ = train_class_layer(feats[:1] * 0, targets[:1] * 0, 2, HeadConfig(epochs=1, lr=0.0), prior,
                                  sub_pixel_factor=1)
    assert torch.equal(layer2.weight[:, :, 0, 0], prior[0])


def test_calibrated_thresholds_need_the_frozen_backbone():
    import pytest

    from wsis.errors import InputError
    from wsis.config import load_config
    from wsis.methods.prm.config import PRMMethodConfig
    from wsis.methods.prm.frozen import check

    check(load_config(PRMMethodConfig, overrides=["model.frozen_backbone=true", "calibration.thresholds=calibrated",
                                                  "model.class_prior=imagenet"]))
    with pytest.raises(InputError, match="frozen_backbone"):
        check(load_config(PRMMethodConfig, overrides=["calibration.thresholds=calibrated"]))


def test_class_layer_follows_the_schedule_settings():
    """The frozen path honours the whole schedule: a length in iterations (the last epoch cut short),
    x0.1 steps and clipping. Known answers: a step at iteration 0 is the same as a 10x smaller rate
    throughout; 8 iterations of batch 4 on 16 images are 2 epochs; 0 iterations leave the start."""
    rng = np.random.default_rng(1)
    feats = torch.from_numpy(rng.normal(0, 1.0, (16, 2, 4, 4)).astype(np.float32))
    targets = torch.from_numpy(rng.random((16, 2)) < 0.5).float()

    def train(**kw):
        layer, losses = train_class_layer(feats, targets, 2, HeadConfig(batch_size=4, **kw), sub_pixel_factor=1)
        return layer.weight.detach().clone(), losses

    stepped, _ = train(epochs=3, lr=0.5, lr_steps=[0])
    small, _ = train(epochs=3, lr=0.05)
    assert torch.allclose(stepped, small, atol=1e-6)
    by_iterations, losses = train(epochs=0, iterations=8, lr=0.5)
    by_epochs, _ = train(epochs=2, lr=0.5)
    assert torch.equal(by_iterations, by_epochs) and len(losses) == 2
    cut, losses = train(epochs=0, iterations=6, lr=0.5)  # the second epoch stops after 2 of its 4 batches
    assert len(losses) == 2 and not torch.equal(cut, by_epochs)
    start, _ = train(epochs=0, iterations=0, lr=0.5)
    torch.manual_seed(0)
    assert torch.equal(start, nn.Conv2d(2, 2, kernel_size=1).weight.detach())
    clipped, _ = train(epochs=1, lr=0.5, grad_clip=1e-8)  # a vanishing step: the start barely moves
    assert torch.allclose(clipped, start, atol=1e-6) and not torch.allclose(by_epochs, start, atol=1e-3)
