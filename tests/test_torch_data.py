"""TagDataset: multi-hot targets, square resize, seeded flips, backbone normalisation, bad files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA
from wsis.data.torch_data import TagDataset, flip_decision
from wsis.errors import InputError
from wsis.structures import ImageRecord


def _red_blue(path, height=4, width=6):
    """Left half pure red, right half pure blue."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2, 0] = 255
    img[:, width // 2:, 2] = 255
    Image.fromarray(img).save(path)
    return path


def _records(tmp_path, tags_list):
    return [ImageRecord(image_id=i, path=_red_blue(tmp_path / f"{i}.png"), width=6, height=4, tags=tags)
            for i, tags in enumerate(tags_list)]


def test_targets_are_multi_hot_in_category_order(tmp_path):
    ds = TagDataset(_records(tmp_path, [(1, 7), (3,), ()]), category_ids=[3, 1, 7], image_size=8, train=False)
    assert len(ds) == 3
    assert torch.equal(torch.stack([ds[i][1] for i in range(3)]),
                       torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_unknown_tags_are_an_error_unless_ignored(tmp_path):
    records = _records(tmp_path, [(1, 9)])
    with pytest.raises(InputError, match="tag 9"):
        TagDataset(records, category_ids=[1, 2])
    assert TagDataset(records, category_ids=[1, 2], ignore_unknown=True).targets.tolist() == [[1.0, 0.0]]


def test_image_is_resized_to_a_square_without_flip_at_test_time(tmp_path):
    ds = TagDataset(_records(tmp_path, [(1,)]), category_ids=[1], image_size=8, train=False)
    for epoch in range(4):
        ds.set_epoch(epoch)
        x, _ = ds[0]
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32
        assert torch.allclose(x[:, :, 0], torch.tensor([1.0, 0.0, 0.0]).view(3, 1).expand(3, 8))  # red left
        assert torch.allclose(x[:, :, 7], torch.tensor([0.0, 0.0, 1.0]).view(3, 1).expand(3, 8))  # blue right


def test_training_flips_are_mirror_images_seeded_by_seed_epoch_index(tmp_path):
    records = _records(tmp_path, [(1,)] * 6)
    ds = TagDataset(records, category_ids=[1], image_size=8, train=True, seed=4)
    plain = TagDataset(records, category_ids=[1], image_size=8, train=False)[0][0]
    seen = []
    for epoch in range(5):
        ds.set_epoch(epoch)
        for i in reversed(range(6)):  # order of access must not matter
            x = ds[i][0]
            flipped = bool(x[2, 0, 0] == 1.0)  # blue on the left
            assert torch.equal(x, plain.flip(-1) if flipped else plain)
            assert flipped == flip_decision(4, epoch, i)
            seen.append(flipped)
    # 30 fair coins: both outcomes occur (probability of all equal is 2 * 2**-30)
    assert 0 < sum(seen) < 30
    again = TagDataset(records, category_ids=[1], image_size=8, train=True, seed=4)
    again.set_epoch(3)
    ds.set_epoch(3)
    assert all(torch.equal(again[i][0], ds[i][0]) for i in range(6))


def test_flip_decision_is_a_fair_coin():
    flips = [flip_decision(0, 0, i) for i in range(2000)]
    # Binomial(2000, 0.5): mean 1000, sd 22.4; 900..1100 is beyond 4 sd.
    assert 900 < sum(flips) < 1100
    assert flip_decision(0, 1, 5) == flip_decision(0, 1, 5)
    assert [flip_decision(0, e, 5) for e in range(40)] != [flip_decision(1, e, 5) for e in range(40)]


def test_backbone_normalisation_is_applied(tmp_path):
    from wsis.backbones import create_backbone

    net = create_backbone("tf_efficientnet_lite0", pretrained=False)
    ds = TagDataset(_records(tmp_path, [(1,)]), category_ids=[1], image_size=8, train=False, normalize=net.normalize)
    x = ds[0][0]
    assert x[:, 0, 0].tolist() == pytest.approx([1.0, -1.0, -1.0])  # red, mean = std = 0.5
    assert x[:, 0, 7].tolist() == pytest.approx([-1.0, -1.0, 1.0])


def test_missing_image_names_the_file(tmp_path):
    record = ImageRecord(image_id=0, path=tmp_path / "gone.jpg", width=4, height=4, tags=(1,))
    with pytest.raises(InputError, match="gone.jpg"):
        TagDataset([record], category_ids=[1])[0]


def test_real_coco_images_and_tags():
    coco = SHARED_DATA / "coco128"
    if not coco.is_dir():
        pytest.skip(f"real data not found at {coco} (shared/data is outside the repository)")
    from wsis.data import load_dataset

    records = load_dataset(coco / "annotations" / "instances_train2017.json")
    first = [r for r in records if r.tags][:2]
    ds = TagDataset(first, category_ids=sorted(records.categories), image_size=64, train=True)
    for i, record in enumerate(first):
        x, target = ds[i]
        assert x.shape == (3, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert [c for c, t in zip(sorted(records.categories), target.tolist()) if t == 1.0] == list(record.tags)
