"""On-disk cache of per-pixel maps (boundaries, saliency) keyed by image content and settings.

The key is the sha1 of the image's pixels (shape, dtype and bytes of the RGB array), so the same
picture under another file name hits the cache and an edited one misses -- and images that never
were files (crops, resized copies) are cached as well. The producer's name and settings (stable JSON,
sorted keys) join the key, so a change of any setting recomputes. Maps are stored as float16
``.npy`` files (ample for values in [0, 1]) at ``root/<name>/<sha1[:2]>/<sha1>-<settings[:12]>.npy``,
written atomically; an unreadable file is recomputed, not an error.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Callable

import numpy as np

from wsis.data.images import atomic_write
from wsis.proposals.cache import settings_key


def image_sha1(image: np.ndarray) -> str:
    """sha1 of an array's shape, dtype and bytes."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha1(f"{image.shape}{image.dtype.str}".encode())
    digest.update(image.data)
    return digest.hexdigest()


class MapCache:
    """Maps of one producer (``name`` + ``settings``) under ``root``."""

    def __init__(self, root: str | Path, name: str, settings: dict[str, Any]) -> None:
        self.root = Path(root)
        self.name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        self.settings_hash = settings_key(name, settings)[:12]

    def entry(self, image: np.ndarray) -> Path:
        key = image_sha1(image)
        return self.root / self.name / key[:2] / f"{key}-{self.settings_hash}.npy"

    def get_or_compute(self, image: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The cached (H, W) float32 map of ``image``, computing and storing it on a miss."""
        path = self.entry(image)
        if path.is_file():
            try:
                return np.load(path, allow_pickle=False).astype(np.float32)
            except (OSError, ValueError):
                pass  # damaged entry: recompute below
        result = np.asarray(compute(image), dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, result.astype(np.float16))
        with atomic_write(path, "wb") as handle:
            handle.write(buffer.getvalue())
        return result
