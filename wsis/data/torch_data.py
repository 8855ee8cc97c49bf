"""torch Datasets over :class:`~wsis.structures.ImageRecord` lists, for training image classifiers on tags.

:class:`TagDataset` yields ``(image, target)``: the image resized to a square ``image_size`` (the PRM
reference trains at 448 x 448, distorting the aspect ratio rather than cropping, so no tagged object is
cut out), randomly flipped when training, normalised by a backbone's ``normalize``; the target is a
multi-hot float vector over ``category_ids`` in the order given.

The flip of image i in epoch e is drawn from a generator seeded by ``(seed, e, i)``, so it does not
depend on worker processes, batch order or what ran before: a resumed run sees the same flips.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wsis.errors import InputError
from wsis.structures import ImageRecord

try:
    from wsis.data.images import load_image
except ImportError:  # the readers' module is optional for this one; PIL does the same job
    from PIL import Image

    def load_image(path: str | Path) -> np.ndarray:
        """Decode an image as an (H, W, 3) uint8 RGB array."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "image not found")
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as e:
            raise InputError(path, f"cannot read image ({e})") from None

PRM_IMAGE_SIZE = 448

Normalizer = Callable[[torch.Tensor], torch.Tensor]


def tag_targets(records: Sequence[ImageRecord], category_ids: Sequence[int], ignore_unknown: bool = False) -> torch.Tensor:
    """(N, C) multi-hot float targets: column c is 1 where the image is tagged ``category_ids[c]``."""
    column = {int(c): i for i, c in enumerate(category_ids)}
    if len(column) != len(category_ids):
        raise ValueError(f"category_ids has duplicates: {list(category_ids)}")
    targets = torch.zeros(len(records), len(column), dtype=torch.float32)
    for row, record in enumerate(records):
        for tag in record.tags:
            if tag in column:
                targets[row, column[tag]] = 1.0
            elif not ignore_unknown:
                raise InputError(record.path, f"tag {tag} is not one of the {len(column)} training categories")
    return targets


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    """Whether image ``index`` is mirrored in ``epoch``: a fair coin seeded by (seed, epoch, index) alone."""
    return bool(np.random.default_rng([seed, epoch, index]).random() < 0.5)


def resize_square(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float in [0, 1], bilinear with antialiasing when shrinking."""
    x = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)
    if x.shape[1:] == (size, size):
        return x
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp_(0.0, 1.0)


class TagDataset(Dataset):
    """Images and multi-hot tag targets for classifier training (see module docstring).

    ``normalize`` is usually ``backbone.normalize``; without it images stay in [0, 1]. Tags outside
    ``category_ids`` are an error unless ``ignore_unknown`` (training on a subset of classes).
    ``image_transform(index, image)``, when given, edits the resized (3, S, S) [0, 1] image before
    the flip and the normalisation (MSER erases images this way without writing copies).
    """

    def __init__(self, records: Sequence[ImageRecord], category_ids: Sequence[int], image_size: int = PRM_IMAGE_SIZE,
                 train: bool = True, normalize: Normalizer | None = None, seed: int = 0,
                 ignore_unknown: bool = False,
                 image_transform: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> None:
        self.records = list(records)
        self.image_transform = image_transform
        self.category_ids = [int(c) for c in category_ids]
        self.targets = tag_targets(self.records, self.category_ids, ignore_unknown)
        self.image_size, self.train, self.normalize, self.seed = int(image_size), train, normalize, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch: the flips depend on it."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = resize_square(load_image(self.records[index].path), self.image_size)
        if self.image_transform is not None:
            x = self.image_transform(index, x)
        if self.train and flip_decision(self.seed, self.epoch, index):
            x = x.flip(-1)
        if self.normalize is not None:
            x = self.normalize(x)
        return x, self.targets[index]
