"""Eqs. 2-3 of MSER on hand-made PRMs: which pixels are erased for a given delta, and to what."""
import numpy as np
import pytest
import torch

from wsis.cues.erasing import (EraseTransform, apply_erase, erase_mask, fill_value, keep_maps, load_mask,
                               save_mask, scale_prms)
from wsis.data.torch_data import TagDataset

torch.set_num_threads(1)
from wsis.structures import ImageRecord


def _two_peaks() -> np.ndarray:
    # peak 0: max 10 at (0, 0), 3 at (0, 1), 1 at (1, 0); rescaled x25.5 -> 255, 76.5, 25.5
    # peak 1: max 2 at (2, 2), 1 at (2, 1);                rescaled x127.5 -> 255, 127.5
    p = np.zeros((2, 3, 3), np.float32)
    p[0, 0, 0], p[0, 0, 1], p[0, 1, 0] = 10, 3, 1
    p[1, 2, 2], p[1, 2, 1] = 2, 1
    return p


def test_scale_max255_and_zero_map():
    p = np.concatenate([_two_peaks(), np.zeros((1, 3, 3), np.float32)])
    s = scale_prms(p, "max255")
    assert s[0, 0, 1] == pytest.approx(76.5)
    assert s[1, 2, 1] == pytest.approx(127.5)
    assert (s[2] == 0).all()  # an empty PRM is not divided by zero


def test_keep_map_is_eq2():
    r = keep_maps(_two_peaks(), delta=30, scale="max255")
    # peak 0: 255 and 76.5 >= 30 are discriminative (0); 25.5 < 30 is kept (1)
    assert r[0].tolist() == [[False, False, True], [True, True, True], [True, True, True]]
    # equality counts as discriminative (P >= delta): 127.5 >= 127.5
    r = keep_maps(_two_peaks(), delta=127.5, scale="max255")
    assert not r[1, 2, 1]


@pytest.mark.parametrize("delta, erased", [
    (30, {(0, 0), (0, 1), (2, 2), (2, 1)}),  # 25.5 of peak 0 survives
    (20, {(0, 0), (0, 1), (1, 0), (2, 2), (2, 1)}),  # now 25.5 >= 20 too
    (100, {(0, 0), (2, 2), (2, 1)}),  # 76.5 < 100, 127.5 >= 100
    (256, set()),  # above every rescaled value
])
def test_erase_mask_is_union_over_peaks(delta, erased):
    m = erase_mask(_two_peaks(), delta, "max255")
    assert {tuple(int(v) for v in i) for i in torch.nonzero(m)} == erased


def test_erase_mask_raw_scale_and_no_peaks():
    m = erase_mask(_two_peaks(), 2.5, "raw")  # raw values 10, 3 >= 2.5; 1, 2, 1 are not
    assert {tuple(int(v) for v in i) for i in torch.nonzero(m)} == {(0, 0), (0, 1)}
    assert not erase_mask(np.zeros((0, 4, 5)), 30).any() and erase_mask(np.zeros((0, 4, 5)), 30).shape == (4, 5)


def test_apply_erase_fills_mean_or_black_and_resizes_mask():
    image = torch.full((3, 4, 4), 0.9)
    mask = torch.zeros(2, 2, dtype=torch.bool)
    mask[0, 1] = True  # top-right quarter of a 4x4 image after nearest resizing
    out = apply_erase(image, mask, fill_value("mean", (0.5, 0.4, 0.3)))
    assert out[:, :2, 2:].reshape(3, -1).tolist() == [[0.5] * 4, [pytest.approx(0.4)] * 4, [pytest.approx(0.3)] * 4]
    assert (out[:, 2:, :] == 0.9).all() and (out[:, :2, :2] == 0.9).all()
    black = apply_erase(image, mask, fill_value("black", (0.5, 0.4, 0.3)))
    assert (black[:, :2, 2:] == 0).all()


def test_mask_file_round_trip_is_packed(tmp_path):
    mask = np.zeros((37, 53), bool)
    mask[3:9, 10:40] = True
    save_mask(tmp_path / "m.npz", mask)
    assert (load_mask(tmp_path / "m.npz") == mask).all()
    with np.load(tmp_path / "m.npz") as d:
        assert d["bits"].size == -(-37 * 53 // 8)  # 8 pixels per byte


def test_tag_dataset_hook_erases_before_normalising(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(tmp_path / "a.png")
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True  # left half erased
    save_mask(tmp_path / "a.npz", mask)
    rec = ImageRecord(image_id=1, path=tmp_path / "a.png", height=8, width=8, tags=(1,))
    ds = TagDataset([rec], [1], image_size=8, train=False, normalize=lambda x: x * 2 - 1,
                    image_transform=EraseTransform([tmp_path / "a.npz"], torch.tensor([0.5, 0.5, 0.5])))
    x, _ = ds[0]
    assert (x[:, :, :4] == 0).all()  # grey 0.5 normalises to 0: "zero" after normalisation
    assert (x[:, :, 4:] == 1).all()
