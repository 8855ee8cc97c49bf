"""PRM fine-tuning with frozen, cached backbone stages (``model.frozen_stages``, wsis.methods.prm.staged)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from wsis.backbones import create_backbone, split_stages
from wsis.cues.prm import PRMNet, peak_stimulation
import cv2
from wsis.data.torch_data import TagDataset, flip_decision
from wsis.errors import InputError
from wsis.methods.prm.staged import staged_training
from wsis.structures import ImageRecord


def _lite0_prm(num_classes: int = 3) -> PRMNet:
    torch.manual_seed(0)
    return PRMNet(create_backbone("tf_efficientnet_lite0", pretrained=False), num_classes, sub_pixel_factor=2)


def _records(tmp_path: Path, n: int = 4, size: int = 48) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8))
        out.append(ImageRecord(image_id=i + 1, path=path, width=size + 8, height=size, tags=[1 + i % 3]))
    return out


@pytest.mark.parametrize("stages", [1, 3, 6])
def test_split_stages_composes_to_the_backbone(stages):
    backbone = create_backbone("tf_efficientnet_lite0", pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64)
    prefix, rest = split_stages(backbone, stages)
    with torch.no_grad():
        assert torch.equal(rest(prefix(x)), backbone(x))
    # stem + `stages` stages in front; every backbone parameter in exactly one part
    assert len(list(prefix.children())) == 2 + stages
    ids = {id(p) for p in prefix.parameters()} | {id(p) for p in rest.parameters()}
    assert ids == {id(p) for p in backbone.parameters()}


@pytest.mark.parametrize("stages", [0, 7, -1])
def test_split_stages_rejects_out_of_range(stages):
    with pytest.raises(InputError, match="frozen_stages must be 1..6"):
        split_stages(create_backbone("tf_efficientnet_lite0", pretrained=False), stages)


def test_staged_features_are_the_frozen_stages_of_each_flipped_image(tmp_path):
    model = _lite0_prm()
    records = _records(tmp_path)
    tags = TagDataset(records, [1, 2, 3], image_size=64, train=True, normalize=model.backbone.normalize, seed=3)
    net, data = staged_training(model, tags, 2, tmp_path / "cache")
    assert data.cache.computed == 2 * len(records)  # every image and its flip, once, before training
    prefix, _ = split_stages(model.backbone, 2)
    prefix.eval()
    for epoch in (0, 1):
        data.set_epoch(epoch)
        for i in range(len(records)):
            image, target = tags[i]  # resized, flipped by the epoch's decision, normalised
            features, target2 = data[i]
            with torch.no_grad():
                expected = prefix(image[None])[0]
            assert torch.equal(target, target2)
            # float16 storage: relative error <= 2^-11 of the value, plus float32 noise
            assert torch.allclose(features, expected, rtol=1e-3, atol=1e-3)
    assert any(flip_decision(3, e, i) for e in (0, 1) for i in range(len(records)))
    assert data.cache.computed == 2 * len(records)  # the epochs read the cache


def test_staged_step_trains_the_rest_and_leaves_the_frozen_stages(tmp_path):
    model = _lite0_prm()
    records = _records(tmp_path, n=2)
    tags = TagDataset(records, [1, 2, 3], image_size=64, train=False, normalize=model.backbone.normalize)
    net, data = staged_training(model, tags, 3, tmp_path / "cache")
    prefix, rest = split_stages(model.backbone, 3)
    before_prefix = [p.detach().clone() for p in prefix.parameters()]
    before_rest = [p.detach().clone() for p in rest.parameters()]
    assert all(not p.requires_grad for p in prefix.parameters())
    assert all(p.requires_grad for p in rest.parameters())

    features = torch.stack([data[i][0] for i in range(2)])
    images = torch.stack([tags[i][0] for i in range(2)])
    net.train()
    scores = net(features)
    # the same network end to end, frozen stages in eval mode: the same class scores
    prefix.eval()
    with torch.no_grad():
        expected = peak_stimulation(model.crm_from_features(rest(prefix(images))), model.win_size, model.peak_filter)
    assert torch.allclose(scores, expected, rtol=1e-2, atol=1e-2)

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scores.sum().backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before_prefix, prefix.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_rest, rest.parameters()))


def test_frozen_stages_config_errors():
    from wsis.config import load_config
    from wsis.methods.prm.config import PRMMethodConfig
    from wsis.methods.prm.frozen import check

    with pytest.raises(InputError, match="frozen_backbone=true already"):
        check(load_config(PRMMethodConfig, None, ["model.frozen_stages=2", "model.frozen_backbone=true"]))
    with pytest.raises(InputError, match=">= 0"):
        check(load_config(PRMMethodConfig, None, ["model.frozen_stages=-1"]))
    with pytest.raises(InputError, match="not defined for backbone 'vgg16'"):
        split_stages(create_backbone("vgg16", pretrained=False), 2)
