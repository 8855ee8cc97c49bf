"""Training samples and the on-disk supervision every module leaves for the next one.

* :class:`SupervisionStore`: one ``.npz`` per training image (masks bit-packed, boxes, 0-based labels,
  weights, at the image's own resolution) under ``<workdir>/<module>/outputs/``; written atomically
  per image, so an interrupted labelling pass resumes at the first image without a file and
  nothing is recomputed.
* :class:`LabelPENetDataset`: image i of epoch e is drawn at a shorter side from ``data.scales``
  (longer side capped at ``data.max_size``) and flipped with probability 1/2, both from
  ``(seed, epoch, i)`` only (exact resume); it carries the tags, the proposals (classification
  module) and the stored supervision of the module before (the others), mapped to the drawn scale
  and flip.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from wsis.data.images import atomic_write, load_image
from wsis.engine.checkpoint import derive_seed
from wsis.masks import resize_nonempty
from wsis.methods.labelpenet.calibration import Candidates
from wsis.methods.labelpenet.config import LabelPENetDataConfig
from wsis.proposals.cache import ProposalCache
from wsis.proposals.config import ProposalConfig
from wsis.structures import ImageRecord


class SupervisionStore:
    """The calibrated instances (:class:`Candidates`) of a module, one file per image id."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, image_id: int) -> Path:
        return self.folder / f"{int(image_id)}.npz"

    def has(self, image_id: int) -> bool:
        return self.path(image_id).is_file()

    def save(self, image_id: int, c: Candidates) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, shape=np.array(c.masks.shape), masks=np.packbits(c.masks.reshape(-1)), boxes=c.boxes,
                 labels=c.labels, weights=c.weights)
        with atomic_write(self.path(image_id), "wb") as f:
            f.write(buf.getvalue())

    def load(self, image_id: int) -> Candidates:
        with np.load(self.path(image_id)) as z:
            shape = tuple(int(s) for s in z["shape"])
            masks = np.unpackbits(z["masks"], count=int(np.prod(shape))).reshape(shape).astype(bool)
            return Candidates(masks, z["boxes"].astype(np.float32), z["labels"].astype(np.int64),
                              z["weights"].astype(np.float32))


def keep_proposals(boxes: np.ndarray, min_size: float) -> np.ndarray:
    """The (N, 4) xyxy ``boxes`` whose sides are both at least ``min_size`` (``data.min_proposal_size``)."""
    if min_size <= 0:
        return boxes
    return boxes[np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_size]


def resize_shorter(image: np.ndarray, shorter: int, max_size: int) -> tuple[np.ndarray, float]:
    """``image`` with its shorter side at ``shorter`` (longer side at most ``max_size``) and the scale."""
    h, w = image.shape[:2]
    scale = min(shorter / min(h, w), max_size / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), scale


def image_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def map_boxes(boxes: np.ndarray, scale: float, width: int, flip: bool) -> np.ndarray:
    """Boxes of the original image in the resized (``width`` wide), possibly flipped image."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4) * scale
    if flip:
        b = np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)
    return b


def map_masks(masks: np.ndarray, height: int, width: int, flip: bool) -> np.ndarray:
    out = resize_nonempty(np.asarray(masks, bool), height, width).view(np.uint8) if len(masks) \
        else np.zeros((0, height, width), np.uint8)
    return out[:, :, ::-1].copy() if flip else out


def target_of(c: Candidates, scale: float, height: int, width: int, flip: bool) -> dict[str, torch.Tensor]:
    """torchvision targets (labels 1..C) of stored instances, at the sample's scale and flip."""
    keep = (c.boxes[:, 2] > c.boxes[:, 0]) & (c.boxes[:, 3] > c.boxes[:, 1]) if len(c) else np.zeros(0, bool)
    boxes = map_boxes(c.boxes[keep], scale, width, flip)
    return {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(c.labels[keep] + 1),
            "weights": torch.from_numpy(c.weights[keep]),
            "masks": torch.from_numpy(map_masks(c.masks[keep], height, width, flip))}


class LabelPENetDataset(Dataset):
    """Samples for training (module docstring): ``supervision`` maps a module's name to the store
    whose instances it is trained on (``sample["targets"][module]``); the classification module
    reads the proposals and the tags instead."""

    def __init__(self, records: Sequence[ImageRecord], category_ids: Sequence[int], data: LabelPENetDataConfig,
                 seed: int, proposals: tuple[ProposalCache, ProposalConfig] | None = None,
                 supervision: dict[str, SupervisionStore] | None = None) -> None:
        self.records = list(records)
        self.index = {c: i for i, c in enumerate(category_ids)}
        self.data, self.seed = data, seed
        self.proposals, self.supervision = proposals, dict(supervision or {})
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def tags(self, record: ImageRecord) -> torch.Tensor:
        t = torch.zeros(len(self.index))
        for c in record.tags:
            if c in self.index:
                t[self.index[c]] = 1.0
        return t

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch, i))
        shorter = int(self.data.scales[rng.integers(len(self.data.scales))])
        flip = bool(self.data.hflip and rng.random() < 0.5)
        original = load_image(record.path)
        image, scale = resize_shorter(original, shorter, self.data.max_size)
        h, w = image.shape[:2]
        if flip:
            image = image[:, ::-1]
        sample = {"index": i, "image_id": record.image_id, "image": image_tensor(image), "tags": self.tags(record),
                  "scale": scale, "flip": flip}
        if self.proposals is not None:
            cache, pcfg = self.proposals
            boxes = keep_proposals(pcfg.get(cache, record.path).boxes, self.data.min_proposal_size)
            sample["proposals"] = torch.from_numpy(map_boxes(boxes, scale, w, flip))
        sample["targets"] = {module: target_of(store.load(record.image_id), scale, h, w, flip)
                             for module, store in self.supervision.items()}
        return sample


def collate(batch: list[dict]) -> list[dict]:
    return batch
