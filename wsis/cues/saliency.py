"""Saliency maps: where a generic observer would look, independent of class.

Every source is a :class:`SaliencyModel` -- called with an RGB uint8 image (and, optionally, the
image's path) it returns an (H, W) float32 map in [0, 1] of the image's size:

* :func:`spectral_residual` -- Hou & Zhang 2007, OpenCV contrib (fast, blob-level, blurry).
* :func:`fine_grained` -- Montabone & Soto 2010, OpenCV contrib (centre-surround differences at
  pixel level, sharper edges).
* :class:`FolderSaliency` -- maps computed elsewhere (e.g. R3Net, as in the papers), one greyscale
  image per input image with the same file stem.
* anything else with the same call signature (a learned network wrapped in a small class).

Each map is min-max normalised per image, so maps from different sources share a range; a flat map
(nothing salient) becomes all zeros.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from wsis.errors import InputError

MAP_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


@runtime_checkable
class SaliencyModel(Protocol):
    """``model(image, path=None) -> (H, W) float32 in [0, 1]``."""

    def __call__(self, image: np.ndarray, path: str | Path | None = None) -> np.ndarray: ...


def _normalise(saliency: np.ndarray) -> np.ndarray:
    saliency = np.asarray(saliency, dtype=np.float32)
    lo, hi = float(saliency.min()), float(saliency.max())
    if hi - lo < 1e-12:
        return np.zeros_like(saliency)
    return (saliency - lo) / (hi - lo)


def _bgr(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)


def _opencv(detector: cv2.saliency.StaticSaliency, image: np.ndarray) -> np.ndarray:
    bgr = _bgr(image)
    ok, saliency = detector.computeSaliency(bgr)
    if not ok:
        raise RuntimeError("OpenCV saliency failed")
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.shape != bgr.shape[:2]:
        saliency = cv2.resize(saliency, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
    return _normalise(saliency)


def spectral_residual(image: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Spectral-residual saliency (OpenCV works on a 64 x 64 thumbnail; enlarged to the image)."""
    return _opencv(cv2.saliency.StaticSaliencySpectralResidual_create(), image)


def fine_grained(image: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Fine-grained centre-surround saliency (OpenCV contrib), full resolution."""
    return _opencv(cv2.saliency.StaticSaliencyFineGrained_create(), image)


class FolderSaliency:
    """Precomputed maps in ``directory``: ``<image stem>.png`` (or .jpg/.jpeg/.bmp), greyscale.

    Maps of another size are resized (bilinear) to the image; colour maps are averaged to grey.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise InputError(self.directory, "saliency folder not found")

    def map_path(self, image_path: str | Path) -> Path:
        stem = Path(image_path).stem
        for ext in MAP_EXTENSIONS:
            candidate = self.directory / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
        raise InputError(self.directory / f"{stem}.png", f"no saliency map for image {Path(image_path).name}")

    def __call__(self, image: np.ndarray, path: str | Path | None = None) -> np.ndarray:
        if path is None:
            raise InputError(self.directory, "precomputed saliency needs the image path to find its map")
        map_path = self.map_path(path)
        saliency = cv2.imread(str(map_path), cv2.IMREAD_UNCHANGED)
        if saliency is None:
            raise InputError(map_path, "cannot read saliency map")
        saliency = saliency.astype(np.float32)
        if saliency.ndim == 3:
            saliency = saliency[:, :, :3].mean(axis=2)
        h, w = np.asarray(image).shape[:2]
        if saliency.shape != (h, w):
            saliency = cv2.resize(saliency, (w, h), interpolation=cv2.INTER_LINEAR)
        return _normalise(saliency)


BUILTIN: dict[str, SaliencyModel] = {
    "spectral_residual": spectral_residual,
    "fine_grained": fine_grained,
}


def get_saliency(name_or_dir: str | Path) -> SaliencyModel:
    """A built-in method by name (``spectral_residual``, ``fine_grained``) or a folder of maps."""
    if str(name_or_dir) in BUILTIN:
        return BUILTIN[str(name_or_dir)]
    if Path(name_or_dir).is_dir():
        return FolderSaliency(name_or_dir)
    raise InputError(name_or_dir, f"not a saliency method ({', '.join(BUILTIN)}) nor a folder of saliency maps")
