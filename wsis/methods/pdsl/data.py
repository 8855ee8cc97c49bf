"""PDSL's training data: an image, its proposals and its tags, augmented as in the paper (4.3).

Per image and epoch, drawn from a generator seeded by ``(seed, epoch, index)`` only (so a resumed
run sees the same data): a crop of ``crop`` x the height and width at a random place (proposals are
clipped to it; those left thinner than 2 pixels are dropped, and the crop is skipped when it would
leave none), exposure and saturation scaled in HSV by factors drawn log-uniformly from
``[1/hsv, hsv]``, a shorter side drawn from ``scales`` (longer side at most ``max_size``), and a
horizontal flip. Proposal boxes are returned three ways: in the network's input coordinates
(``boxes``), clipped to the crop in original coordinates (``orig_boxes``, where mask targets are
cut) and as generated (``source_boxes``, what GrabCut segments, so its masks are shared across
epochs and augmentations).
"""
from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from wsis.data.images import load_image
from wsis.data.torch_data import tag_targets
from wsis.methods.pdsl.config import PDSLDataConfig
from wsis.proposals.cache import ProposalCache
from wsis.structures import ImageRecord

Normalizer = Callable[[torch.Tensor], torch.Tensor]
MIN_SIDE = 2.0


class ProposalBoxes:
    """``record -> (P, 4) float32`` proposal boxes from the proposal cache, kept in memory."""

    def __init__(self, cache: ProposalCache, method: str, settings: dict) -> None:
        self.cache, self.method, self.settings = cache, method, dict(settings)
        self._boxes: dict[str, np.ndarray] = {}

    def __call__(self, record: ImageRecord) -> np.ndarray:
        key = str(record.path)
        if key not in self._boxes:
            props = self.cache.get_or_compute(record.path, self.method, **self.settings)
            h, w = props.image_size
            if len(props) == 0:  # e.g. a blank image: the whole image is the only candidate
                boxes = np.array([[0, 0, w, h]], np.float32)
            else:
                boxes = props.boxes.astype(np.float32)
            self._boxes[key] = boxes
        return self._boxes[key]


def resize_scale(height: int, width: int, shorter: int, max_size: int) -> float:
    """Factor that brings the shorter side to ``shorter`` without the longer passing ``max_size``."""
    return min(shorter / min(height, width), max_size / max(height, width))


def jitter_hsv(image: np.ndarray, saturation: float, value: float) -> np.ndarray:
    """Scale saturation and value (exposure) of an RGB uint8 image by the given factors."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] *= saturation
    hsv[..., 2] *= value
    return cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def flip_boxes(boxes: np.ndarray | torch.Tensor, width: int | float):
    """xyxy boxes mirrored in an image ``width`` wide."""
    out = boxes.copy() if isinstance(boxes, np.ndarray) else boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


class PDSLDataset(Dataset):
    """Augmented (image, proposals, tags) samples for PDSL training (see module docstring)."""

    def __init__(self, records: Sequence[ImageRecord], category_ids: Sequence[int],
                 boxes_fn: Callable[[ImageRecord], np.ndarray], augment: PDSLDataConfig,
                 normalize: Normalizer, seed: int = 0) -> None:
        self.records = list(records)
        self.targets = tag_targets(self.records, category_ids)
        self.boxes_fn, self.augment, self.normalize, self.seed = boxes_fn, augment, normalize, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        a = self.augment
        record = self.records[index]
        image = load_image(record.path)
        source = self.boxes_fn(record)
        h, w = image.shape[:2]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        # every draw is made whether used or not, so one setting does not shift the others' draws
        u_crop = rng.random(2)
        log_f = np.log(max(a.hsv, 1.0))
        sat, val = np.exp(rng.uniform(-log_f, log_f, 2)) if log_f > 0 else (1.0, 1.0)
        shorter = int(a.scales[rng.integers(len(a.scales))])
        flip = a.hflip and bool(rng.random() < 0.5)

        x0 = y0 = 0
        x1, y1 = w, h
        keep = np.ones(len(source), bool)
        clipped = source.copy()
        if a.crop < 1.0:
            cw, ch = max(1, round(w * a.crop)), max(1, round(h * a.crop))
            cx0, cy0 = int(u_crop[0] * (w - cw + 1)), int(u_crop[1] * (h - ch + 1))
            window = np.clip(source, [cx0, cy0, cx0, cy0], [cx0 + cw, cy0 + ch, cx0 + cw, cy0 + ch])
            ok = ((window[:, 2] - window[:, 0]) >= MIN_SIDE) & ((window[:, 3] - window[:, 1]) >= MIN_SIDE)
            if ok.any():
                x0, y0, x1, y1 = cx0, cy0, cx0 + cw, cy0 + ch
                keep, clipped = ok, window
        image = image[y0:y1, x0:x1]
        if sat != 1.0 or val != 1.0:
            image = jitter_hsv(image, float(sat), float(val))
        scale = resize_scale(image.shape[0], image.shape[1], shorter, a.max_size)
        image = resize_image(image, scale)
        boxes = (clipped[keep] - np.array([x0, y0, x0, y0], np.float32)) * np.float32(scale)
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if flip:
            x = x.flip(-1)
            boxes = flip_boxes(boxes, image.shape[1])
        return {"image": self.normalize(x), "boxes": torch.from_numpy(boxes.astype(np.float32)),
                "orig_boxes": torch.from_numpy(clipped[keep].astype(np.float32)),
                "source_boxes": torch.from_numpy(source[keep].astype(np.float32)),
                "labels": self.targets[index], "index": index, "epoch": self.epoch, "flip": flip,
                "path": str(record.path)}


def collate(items: Sequence[dict]) -> dict:
    """Images padded into one batch; proposals stay per-image lists."""
    from wsis.methods.pdsl.model import pad_images

    return {"images": pad_images([it["image"] for it in items]),
            "boxes": [it["boxes"] for it in items], "orig_boxes": [it["orig_boxes"] for it in items],
            "source_boxes": [it["source_boxes"] for it in items],
            "labels": torch.stack([it["labels"] for it in items]),
            "index": [it["index"] for it in items], "epoch": [it["epoch"] for it in items],
            "flip": [it["flip"] for it in items], "path": [it["path"] for it in items]}
