"""ImageNet class prior: the synset table, tag scores from ImageNet logits, and the prior class layer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wsis.cues.class_prior import (
    has_prior,
    imagenet_tag_scores,
    init_class_layer,
    prior_class_weights,
    synset_table,
    synsets_for,
)


def test_table_covers_the_80_coco_classes_with_disjoint_known_synsets():
    table = synset_table()
    assert len(table) == 80
    assert table["dog"] == list(range(151, 269))  # the 118 breeds
    assert table["sheep"] == [348, 349]  # ram, bighorn
    assert table["giraffe"] == []
    flat = [i for v in table.values() for i in v]
    assert len(flat) == len(set(flat)) and all(0 <= i < 1000 for i in flat)
    # VOC spellings resolve to the COCO entries
    assert synsets_for(["tvmonitor", "pottedplant", "unknown"]) == [table["tv"], table["potted plant"], []]


def test_tag_scores_sum_the_softmax_of_the_synsets():
    logits = torch.full((1, 1000), -50.0)
    logits[0, 348] = logits[0, 349] = 0.0  # all mass split between ram and bighorn
    scores = imagenet_tag_scores(logits, ["sheep", "dog", "giraffe"])
    assert scores[0].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)


def test_prior_layer_is_mean_synset_minus_mean_class():
    head = nn.Linear(4, 1000)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[348] = torch.tensor([2.0, 0, 0, 0])
        head.weight[349] = torch.tensor([0.0, 2, 0, 0])
        head.bias[348] = 1.0
    w, b = prior_class_weights(head, ["sheep", "giraffe"])
    # mean over synsets [1, 1, 0, 0]; mean over all 1000 classes [0.002, 0.002, 0, 0]
    assert w[0].tolist() == pytest.approx([0.998, 0.998, 0, 0])
    assert float(b[0]) == pytest.approx(0.5 - 0.001)
    assert w[1].abs().sum() == 0 and b[1] == 0
    layer = nn.Conv2d(4, 2, 1)
    before = layer.weight[1].clone()
    known = init_class_layer(layer, head, ["sheep", "giraffe"])
    assert known.tolist() == [True, False]
    assert torch.allclose(layer.weight[0, :, 0, 0], w[0]) and torch.equal(layer.weight[1], before)
    assert has_prior(["cat", "kite"]).tolist() == [True, False]
    np.testing.assert_array_equal(has_prior([]), np.zeros(0, bool))
