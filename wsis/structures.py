"""The two data types every reader, method and evaluator shares.

* :class:`ImageRecord` -- one image and whatever ground truth the dataset has for it (tags always;
  boxes, instance masks, crowd flags, VOC ``difficult`` flags and an ignore region when available).
* :class:`Instances` -- a set of detected or annotated instances: boxes, category ids, scores and
  masks (COCO RLE dicts or a bool array).
* :class:`RecordSet` -- the records of a dataset together with its category table.

Category labels are always the dataset's own category ids (COCO ids 1..90 with gaps; VOC 1..20),
never contiguous training indices; methods map to and from indices themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from wsis import masks as mask_ops
from wsis.masks import RLE


@dataclass
class Instances:
    """N instances in an image of size ``image_size = (height, width)``.

    ``masks`` is either ``None`` (boxes only), a list of N RLE dicts, or an (N, H, W) bool array.
    Boxes are xyxy in pixel-edge coordinates. ``scores`` is 1 for ground truth.
    """

    image_size: tuple[int, int]
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray | None = None
    masks: list[RLE] | np.ndarray | None = None

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.labels)
        self.scores = np.ones(n, np.float32) if self.scores is None else np.asarray(self.scores, np.float32).reshape(-1)
        if len(self.boxes) == 0 and n > 0 and self.masks is not None:
            self.boxes = mask_ops.to_bbox(self.rles())
        if len(self.boxes) != n or len(self.scores) != n:
            raise ValueError(f"Instances: {len(self.boxes)} boxes, {n} labels, {len(self.scores)} scores")
        if self.masks is not None:
            if isinstance(self.masks, np.ndarray):
                if self.masks.ndim != 3 or self.masks.shape[0] != n or self.masks.shape[1:] != self.image_size:
                    raise ValueError(f"Instances: masks of shape {self.masks.shape}, expected ({n}, {self.image_size})")
                self.masks = self.masks.astype(bool, copy=False)
            else:
                self.masks = list(self.masks)
                if len(self.masks) != n:
                    raise ValueError(f"Instances: {len(self.masks)} masks for {n} labels")
                for m in self.masks:
                    if tuple(m["size"]) != self.image_size:
                        raise ValueError(f"Instances: mask of size {tuple(m['size'])} in an image of {self.image_size}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    def rles(self) -> list[RLE]:
        """Masks as compressed RLEs (encoding an array on demand)."""
        if self.masks is None:
            raise ValueError("these instances have no masks")
        if isinstance(self.masks, np.ndarray):
            return mask_ops.encode_many(self.masks)
        return [mask_ops.compress(m) for m in self.masks]

    def mask_array(self) -> np.ndarray:
        """Masks as an (N, H, W) bool array (decoding RLEs on demand)."""
        if self.masks is None:
            raise ValueError("these instances have no masks")
        if isinstance(self.masks, np.ndarray):
            return self.masks
        return mask_ops.decode_many(self.masks, self.image_size)

    def select(self, index: np.ndarray | Sequence[int] | slice) -> "Instances":
        """A subset by integer indices, a bool mask or a slice."""
        idx = np.arange(len(self))[index]
        masks = None
        if isinstance(self.masks, np.ndarray):
            masks = self.masks[idx]
        elif self.masks is not None:
            masks = [self.masks[i] for i in idx]
        return Instances(self.image_size, self.boxes[idx], self.labels[idx], self.scores[idx], masks)

    def compact(self) -> "Instances":
        """The same instances with masks stored as RLE (cheap to keep thousands in memory)."""
        if isinstance(self.masks, np.ndarray):
            return Instances(self.image_size, self.boxes, self.labels, self.scores, self.rles())
        return self

    @staticmethod
    def concat(parts: Sequence["Instances"]) -> "Instances":
        if not parts:
            raise ValueError("Instances.concat needs at least one part")
        size = parts[0].image_size
        with_masks = all(p.masks is not None for p in parts)
        return Instances(
            size,
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.scores for p in parts]),
            [m for p in parts for m in p.rles()] if with_masks else None,
        )


@dataclass
class ImageRecord:
    """One image: where it is, its size, its tags and any ground truth the dataset provides.

    ``tags`` are the category ids present (image-level labels; all a weakly supervised method may
    train on). ``gt`` holds instance boxes/labels and, when annotated, masks. ``crowd`` marks
    COCO ``iscrowd`` regions (not ground truth instances), ``difficult`` VOC's difficult boxes, and
    ``ignore`` is a region whose pixels are excluded from every IoU (VOC's 255 boundary band).
    """

    image_id: int
    path: Path
    width: int
    height: int
    tags: tuple[int, ...] = ()
    gt: Instances | None = None
    crowd: np.ndarray | None = None
    difficult: np.ndarray | None = None
    ignore: RLE | None = None
    file_name: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.file_name:
            self.file_name = self.path.name
        n = 0 if self.gt is None else len(self.gt)
        self.crowd = np.zeros(n, bool) if self.crowd is None else np.asarray(self.crowd, bool).reshape(-1)
        self.difficult = np.zeros(n, bool) if self.difficult is None else np.asarray(self.difficult, bool).reshape(-1)
        if len(self.crowd) != n or len(self.difficult) != n:
            raise ValueError(f"ImageRecord {self.image_id}: flags do not match {n} instances")
        self.tags = tuple(sorted({int(t) for t in self.tags}))

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.height, self.width)

    @property
    def num_instances(self) -> int:
        """Non-crowd ground-truth instances."""
        return 0 if self.gt is None else int((~self.crowd).sum())

    def ignore_mask(self) -> np.ndarray | None:
        return None if self.ignore is None else mask_ops.decode(self.ignore)


@dataclass
class RecordSet:
    """A dataset: its records and its category table ``{category_id: name}``."""

    records: list[ImageRecord]
    categories: dict[int, str]
    name: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> ImageRecord:
        return self.records[i]

    @property
    def num_instances(self) -> int:
        return sum(r.num_instances for r in self.records)

    def by_id(self) -> dict[int, ImageRecord]:
        return {r.image_id: r for r in self.records}

    def category_id(self, name: str) -> int:
        for cid, cname in self.categories.items():
            if cname == name:
                return cid
        raise KeyError(name)

    def subset(self, image_ids: Sequence[int]) -> "RecordSet":
        keep = set(int(i) for i in image_ids)
        return RecordSet([r for r in self.records if r.image_id in keep], dict(self.categories), self.name)
