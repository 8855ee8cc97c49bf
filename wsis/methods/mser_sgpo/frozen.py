"""MSER's stages with the photo recipe (issue 11; not in the paper): a frozen backbone whose feature
maps are cached on disk, each stage training only PRM's class layer on them
(:func:`wsis.methods.prm.frozen.fit_frozen_features`, the same code as PRM's ``model.frozen_backbone``).

Stage t trains on the images I^t *erased* by the earlier stages, so its features are those of the
erased images: each image I^t is built in memory (the original resized, erased by its cumulative
mask, as the fine-tuned path's ``TagDataset`` builds it) and its features are cached under a key of
its content: the sha1 of the file's sha1, the mask's bits and the erase colour. An image that no
stage erased keeps the file's own key, so stage 1 (and every unerased image of later stages) shares
its entries with a PRM run on the same backbone and size.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from wsis.cues.erasing import apply_erase, load_mask
from wsis.data.images import load_image
from wsis.data.torch_data import resize_square
from wsis.engine.feature_cache import FeatureCache
from wsis.structures import ImageRecord


def erased_key(file_key: str, mask: np.ndarray | None, fill: torch.Tensor) -> str:
    """The content key of an erased image: the file's key when nothing is erased, else a hash of the
    file's key, the (H, W) bool mask and the fill colour."""
    if mask is None or not mask.any():
        return file_key
    digest = hashlib.sha1(file_key.encode())
    digest.update(np.asarray(mask.shape, np.int64).tobytes())
    digest.update(np.packbits(np.asarray(mask, bool).ravel()).tobytes())
    digest.update(np.asarray(fill, np.float32).tobytes())
    return "erased-" + digest.hexdigest()


def stage_features(cache: FeatureCache, records: Sequence[ImageRecord], masks: Sequence[Path | None],
                   fill: torch.Tensor, hflip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, F, h, w) cached features of the images I^t (``masks[i]`` = the cumulative erase mask of
    image i, None = the original) and of their mirror images (the plain ones again without ``hflip``)."""
    plain, flipped = [], []
    for record, mask_path in zip(records, masks):
        file_key = cache.file_key(record.path)
        mask = load_mask(mask_path) if mask_path is not None else None
        key = erased_key(file_key, mask, fill)
        if key == file_key:  # the image as it is on disk: PRM's entries
            plain.append(cache.get(record.path, False))
            flipped.append(cache.get(record.path, True) if hflip else plain[-1])
            continue
        x = apply_erase(resize_square(load_image(record.path), cache.size), torch.from_numpy(mask), fill)
        plain.append(cache.get_prepared(key, x, False))
        flipped.append(cache.get_prepared(key, x, True) if hflip else plain[-1])
    return torch.stack(plain), torch.stack(flipped)
