"""Class-agnostic object proposals: boxes or masks, each with an objectness score.

Every generator and reader returns :class:`Proposals`; :func:`generate_proposals` picks a generator
by name. Masks are compressed COCO RLE dicts (see :mod:`wsis.masks`), boxes xyxy in pixel-edge
coordinates of the original image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from wsis import masks as mask_ops
from wsis.errors import InputError
from wsis.masks import RLE


@dataclass
class Proposals:
    """N proposals in an image of ``image_size = (height, width)``; ``masks`` is None for boxes only."""

    image_size: tuple[int, int]
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    masks: list[RLE] | None = None
    objectness: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if self.masks is not None:
            self.masks = [mask_ops.compress(m) for m in self.masks]
            if len(self.boxes) == 0 and self.masks:
                self.boxes = mask_ops.to_bbox(self.masks)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.objectness = (
            np.ones(n, np.float32) if self.objectness is None else np.asarray(self.objectness, np.float32).reshape(-1)
        )
        if len(self.objectness) != n:
            raise ValueError(f"Proposals: {n} boxes and {len(self.objectness)} objectness scores")
        if self.masks is not None:
            if len(self.masks) != n:
                raise ValueError(f"Proposals: {len(self.masks)} masks for {n} boxes")
            for m in self.masks:
                if tuple(m["size"]) != self.image_size:
                    raise ValueError(f"Proposals: mask of size {tuple(m['size'])} in an image of {self.image_size}")

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    def mask_array(self) -> np.ndarray:
        """(N, H, W) bool array (decoded on demand; large for thousands of proposals)."""
        if self.masks is None:
            raise ValueError("these proposals have no masks")
        return mask_ops.decode_many(self.masks, self.image_size)

    def select(self, index: np.ndarray | Sequence[int] | slice) -> "Proposals":
        """A subset by integer indices, a bool mask or a slice."""
        idx = np.arange(len(self))[index]
        masks = None if self.masks is None else [self.masks[i] for i in idx]
        return Proposals(self.image_size, self.boxes[idx], masks, self.objectness[idx])

    def sorted(self) -> "Proposals":
        """Proposals by decreasing objectness (stable, so ties keep their order)."""
        return self.select(np.argsort(-self.objectness, kind="stable"))


def _superpixel(image: np.ndarray, **settings: Any) -> Proposals:
    from wsis.proposals.masks import superpixel_proposals

    return superpixel_proposals(image, **settings)


def _ucm(image: np.ndarray, **settings: Any) -> Proposals:
    from wsis.proposals.ucm import ucm_proposals

    return ucm_proposals(image, **settings)


def _ucm_superpixel(image: np.ndarray, **settings: Any) -> Proposals:
    from wsis.proposals.pooled import pooled_proposals

    return pooled_proposals(image, **settings)


def _selective_search(image: np.ndarray, **settings: Any) -> Proposals:
    from wsis.proposals.boxes import selective_search

    return selective_search(image, **settings)


def _selective_search_grabcut(
    image: np.ndarray, grabcut_top: int = 100, iterations: int = 3, **settings: Any
) -> Proposals:
    # GrabCut costs tens of ms per box, so only the best-ranked boxes are turned into masks.
    from wsis.proposals.boxes import selective_search
    from wsis.proposals.grabcut import grabcut_masks

    boxes = selective_search(image, **settings).select(slice(0, grabcut_top))
    return grabcut_masks(image, boxes.boxes, iterations=iterations, scores=boxes.objectness)


GENERATORS: dict[str, Callable[..., Proposals]] = {
    "superpixel": _superpixel,
    "ucm": _ucm,
    "ucm+superpixel": _ucm_superpixel,
    "selective_search": _selective_search,
    "selective_search+grabcut": _selective_search_grabcut,
}


def generate_proposals(image: np.ndarray, method: str = "superpixel", **settings: Any) -> Proposals:
    """Proposals for an RGB uint8 (H, W, 3) image by generator name (see ``GENERATORS``)."""
    if method not in GENERATORS:
        raise InputError(None, f"unknown proposal method {method!r}; choose one of {sorted(GENERATORS)}")
    return GENERATORS[method](check_image(image), **settings)


def check_image(image: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3); a grey (H, W) image is repeated over three channels."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    return np.ascontiguousarray(image)


__all__ = ["Proposals", "generate_proposals", "GENERATORS", "check_image"]
