"""MSER + SGPO with the photo recipe (frozen backbone, cached features of the *erased* images of each
stage, ImageNet prior, calibrated thresholds; wsis/methods/mser_sgpo/frozen.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from wsis.engine.feature_cache import FeatureCache
from wsis.errors import InputError


class _Mean(nn.Module):
    """A stand-in backbone: 2x2 average pooling of the (unnormalised) image."""

    name = "mean2"

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.calls = 0

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return nn.functional.avg_pool2d(x, 2) * self.scale


def _record(path, image_id=1):
    from wsis.structures import ImageRecord

    return ImageRecord(image_id=image_id, path=str(path), width=4, height=4, tags=[1])


def test_erased_key_changes_with_mask_and_fill_but_not_for_an_empty_mask():
    from wsis.methods.mser_sgpo.frozen import erased_key

    grey, black = torch.full((3,), 0.5), torch.zeros(3)
    mask = np.zeros((4, 4), bool)
    assert erased_key("abc", None, grey) == "abc"
    assert erased_key("abc", mask, grey) == "abc"  # nothing erased: the file's own entries
    mask[0, 0] = True
    other = mask.copy()
    other[1, 1] = True
    keys = {erased_key("abc", mask, grey), erased_key("abc", other, grey), erased_key("abc", mask, black),
            erased_key("abd", mask, grey)}
    assert len(keys) == 4 and "abc" not in keys


def test_stage_features_are_those_of_the_erased_image(tmp_path):
    from wsis.cues.erasing import save_mask
    from wsis.methods.mser_sgpo.frozen import stage_features

    img = np.full((4, 4, 3), 200, np.uint8)  # every channel 200/255
    path = tmp_path / "a.png"
    Image.fromarray(img).save(path)
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # the top-left 2x2 block is erased
    save_mask(tmp_path / "m.npz", mask)
    net = _Mean()
    cache = FeatureCache(tmp_path / "cache", net, size=4)
    fill = torch.tensor([0.0, 0.5, 1.0])
    plain, flipped = stage_features(cache, [_record(path)], [tmp_path / "m.npz"], fill, hflip=True)
    v = 200 / 255
    # 2x2 average pooling: the erased block becomes the fill colour, the other three keep the image's
    expected = torch.full((3, 2, 2), v)
    expected[:, 0, 0] = fill
    torch.testing.assert_close(plain[0], expected, atol=1e-3, rtol=0)
    mirrored = expected.flip(-1)  # the mirror image of the erased image: the block is now top-right
    torch.testing.assert_close(flipped[0], mirrored, atol=1e-3, rtol=0)
    # the unerased image: the file's own entries (what PRM caches), not the erased ones
    original, _ = stage_features(cache, [_record(path)], [None], fill, hflip=False)
    torch.testing.assert_close(original[0], torch.full((3, 2, 2), v), atol=1e-3, rtol=0)
    assert torch.equal(original[0], cache.get(path, False))
    # read back from disk, not recomputed
    calls = net.calls
    again, _ = stage_features(cache, [_record(path)], [tmp_path / "m.npz"], fill, hflip=True)
    assert net.calls == calls and torch.equal(again, plain)


def test_get_prepared_refuses_an_image_of_another_size(tmp_path):
    cache = FeatureCache(tmp_path / "cache", _Mean(), size=4)
    with pytest.raises(ValueError):
        cache.get_prepared("k", torch.zeros(3, 8, 8))


@pytest.mark.parametrize("overrides", [
    ["calibration.thresholds=calibrated"],  # calibration needs the frozen backbone's cached features
    ["model.frozen_stages=1"],  # its cache would hold the images as they are on disk, not the erased ones
    ["model.frozen_backbone=true", "model.frozen_stages=1"],
    ["erasing.stages=0"],
])
def test_config_errors(overrides):
    from wsis.config import load_config
    from wsis.methods.mser_sgpo import MSERSGPOConfig, check_config

    with pytest.raises(InputError):
        check_config(load_config(MSERSGPOConfig, overrides=overrides))


def test_photo_config_is_the_paper_config_plus_the_recipe():
    from wsis.config import load_config
    from wsis.methods.mser_sgpo import MSERSGPOConfig, check_config

    photos = load_config(MSERSGPOConfig, "wsis/configs/mser_sgpo_photos_cpu.yaml")
    check_config(photos)
    assert photos.model.frozen_backbone and photos.model.class_prior == "imagenet"
    assert photos.calibration.thresholds == "calibrated" and photos.test.retrieval.saliency == "u2netp"
    assert (photos.erasing.stages, photos.erasing.delta) == (2, 30.0)
    paper = load_config(MSERSGPOConfig, "wsis/configs/mser_sgpo.yaml")
    assert not paper.model.frozen_backbone and paper.model.class_prior == "none"
    assert paper.calibration.thresholds == "fixed"


def test_stage2_trains_on_features_of_the_erased_images(tmp_path, monkeypatch):
    import wsis.methods.mser_sgpo as mser
    from wsis.cues.erasing import apply_erase, fill_value, load_mask
    from wsis.data.images import load_image
    from wsis.data.synthetic import make_scenes
    from wsis.data.torch_data import resize_square

    records = make_scenes(tmp_path / "data", num_images=6, seed=3, image_size=(64, 64))
    seen = []
    original = mser.fit_frozen_features

    def spy(model, feats, flipped, targets, names, cfg):
        seen.append((feats.clone(), flipped.clone(), targets.clone()))
        return original(model, feats, flipped, targets, names, cfg)

    monkeypatch.setattr(mser, "fit_frozen_features", spy)
    overrides = ["model.pretrained=false", "data.image_size=64", "device=cpu", "model.sub_pixel_factor=2",
                 "test.max_peaks_per_class=2", "model.frozen_backbone=true", "schedule.epochs=2",
                 "schedule.batch_size=4", "calibration.thresholds=calibrated", "calibration.folds=2",
                 "calibration.min_positives=1", "test.retrieval.saliency=spectral_residual"]
    work = tmp_path / "run"
    predictor = mser.fit(records, overrides=overrides, workdir=work)
    assert len(seen) == 2
    model = predictor.models[0]
    backbone = model.backbone.eval()
    fill = fill_value("mean", backbone.mean)
    erased = 0
    with torch.no_grad():
        for i, rec in enumerate(records.records):
            x = resize_square(load_image(rec.path), 64)
            mask = load_mask(work / "stage1" / "erase" / f"{rec.image_id}.npz")
            erased += bool(mask.any())
            x2 = apply_erase(x, torch.from_numpy(mask), fill)
            for t, image in ((0, x), (1, x2)):
                feats, flipped, _ = seen[t]
                want = backbone(backbone.normalize(image[None]))[0]
                want_flip = backbone(backbone.normalize(image.flip(-1)[None]))[0]
                torch.testing.assert_close(feats[i], want, atol=2e-2, rtol=2e-2)  # float16 cache
                torch.testing.assert_close(flipped[i], want_flip, atol=2e-2, rtol=2e-2)
    assert erased > 0
    assert not torch.equal(seen[0][0], seen[1][0])
    torch.testing.assert_close(seen[0][2], seen[1][2])  # the same tags at both stages
    # the erased images' entries sit beside the originals' in the run's feature cache
    assert len(list((work / "features").rglob("erased-*.npy"))) == 2 * erased

    # each stage's calibrated thresholds are stored and used by that stage's network
    for t in (1, 2):
        stored = json.loads((work / f"stage{t}" / "thresholds.json").read_text())["class_thresholds"]
        assert len(stored) == len(records.categories)
        assert predictor.thresholds[t - 1].tolist() == pytest.approx(stored)
    loaded = mser.load(work)
    assert [th.tolist() for th in loaded.thresholds] == [th.tolist() for th in predictor.thresholds]
    assert loaded.thresholds[0] is not None
    # thresholds no score reaches: no network keeps a peak
    loaded.thresholds = [torch.full((len(records.categories),), float("inf"))] * 2
    x = loaded.base.prepare(load_image(records.records[0].path))
    assert all(len(r.peaks) == 0 for r in loaded.stage_responses(x))
    # an explicit test.class_threshold replaces them, as for PRM
    assert mser.load(work, ["test.class_threshold=0.5"]).thresholds == [None, None]
