"""Saliency sources on a generated image: a bright object on a flat, slightly noisy background."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsis.cues.saliency import FolderSaliency, SaliencyModel, fine_grained, get_saliency, spectral_residual
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
