"""Frozen-backbone feature maps cached on disk, so that a head on top trains in seconds.

With the backbone frozen (no gradient, BN in eval mode) its output for an image depends only on the
image's bytes, the backbone (name + weights), the input size and whether the image is mirrored. The
cache stores each such feature map once, as float16 ``.npy`` under
``root/<backbone>-<weights key>/<size>/<sha1[:2]>/<sha1>-<flip>.npy``, written atomically; a later
run (or another method on the same backbone) reads it back instead of running the network.
Any long schedule on a frozen backbone then costs one forward pass per image and flip.

The image goes through the same preprocessing as training (:func:`wsis.data.torch_data.resize_square`
to ``size`` squared, then ``backbone.normalize``), so cached features equal what a frozen network
sees in :class:`~wsis.data.torch_data.TagDataset`.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wsis.data.images import load_image
from wsis.data.torch_data import resize_square


def file_sha1(path: str | Path) -> str:
    """sha1 of a file's bytes."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_key(module: nn.Module) -> str:
    """A short hash of a module's parameters and buffers: two backbones with the same name but other
    weights (random init in a test, a fine-tuned file) never share entries."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        t = tensor.detach().float().cpu().flatten()
        # a strided sample plus the sum: cheap, and any real change of weights changes it
        digest.update(t[:: max(1, t.numel() // 64)].numpy().tobytes())
        digest.update(np.float64(t.double().sum().item()).tobytes())
    return digest.hexdigest()[:12]


class FeatureCache:
    """Feature maps of a frozen ``backbone`` at ``size`` x ``size`` px, cached under ``root``."""

    def __init__(self, root: str | Path, backbone: nn.Module, size: int,
                 device: torch.device | str = "cpu") -> None:
        self.root = Path(root)
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.size = int(size)
        self.device = torch.device(device)
        name = getattr(backbone, "name", type(backbone).__name__)
        self.folder = self.root / f"{name}-{weights_key(backbone)}" / str(self.size)
        self.computed = 0  # forward passes run by this object (the rest came from disk)
        # A training loop asks for the same files every epoch: hash each one once while its size and
        # modification time stay the same, instead of reading the image again per lookup.
        self._keys: dict[tuple[str, int, int], str] = {}

    def file_key(self, image_path: str | Path) -> str:
        """The content key of an image file (its sha1), hashed once per path, size and mtime."""
        stat = os.stat(image_path)
        ident = (str(image_path), stat.st_mtime_ns, stat.st_size)
        key = self._keys.get(ident)
        if key is None:
            key = self._keys[ident] = file_sha1(image_path)
        return key

    def entry(self, image_path: str | Path, flip: bool) -> Path:
        return self.key_entry(self.file_key(image_path), flip)

    def key_entry(self, key: str, flip: bool) -> Path:
        return self.folder / key[:2] / f"{key}-{'flip' if flip else 'plain'}.npy"

    @torch.no_grad()
    def compute(self, image: np.ndarray, flip: bool) -> torch.Tensor:
        """(C, h, w) float32 features of an (H, W, 3) uint8 image, without the cache."""
        x = resize_square(image, self.size)
        if flip:
            x = x.flip(-1)
        x = self.backbone.normalize(x[None]).to(self.device)
        return self.backbone.to(self.device)(x)[0].float().cpu()

    def get(self, image_path: str | Path, flip: bool = False) -> torch.Tensor:
        """(C, h, w) float32 features of the image file (float16 precision), cached."""
        entry = self.entry(image_path, flip)
        if entry.is_file():
            try:
                return torch.from_numpy(np.load(entry).astype(np.float32))
            except (OSError, ValueError):
                pass  # a damaged entry is recomputed
        features = self.compute(load_image(image_path), flip)
        self.computed += 1
        _save_atomic(entry, features.numpy().astype(np.float16))
        return features.to(torch.float16).float()

    def get_prepared(self, key: str, image: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """(C, h, w) features of an image the caller has already resized to ``size`` squared ((3, S, S)
        in [0, 1], e.g. an erased image that exists only in memory), cached under ``key``: the caller's
        content key of that image (it must change whenever the image does)."""
        if tuple(image.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"get_prepared expects a {self.size}x{self.size} image, got {tuple(image.shape)}")
        entry = self.key_entry(key, flip)
        if entry.is_file():
            try:
                return torch.from_numpy(np.load(entry).astype(np.float32))
            except (OSError, ValueError):
                pass  # a damaged entry is recomputed
        x = image.flip(-1) if flip else image
        with torch.no_grad():
            features = self.backbone.to(self.device)(self.backbone.normalize(x[None]).to(self.device))[0].float().cpu()
        self.computed += 1
        _save_atomic(entry, features.numpy().astype(np.float16))
        return features.to(torch.float16).float()

    def get_many(self, paths: Sequence[str | Path], flip: bool = False) -> torch.Tensor:
        """(N, C, h, w) features of several image files."""
        return torch.stack([self.get(p, flip) for p in paths])


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
