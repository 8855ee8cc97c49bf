"""DASNet's training data (``papers/003``, 4.1): square 320 x 320 inputs with SSD's augmentation
(zoom-out "expand" on a mean-filled canvas, IoU-constrained random crop, photometric distortion plus
Gaussian noise, horizontal flip), and for the segmentation stage one class per sample with a random
number of that class's boxes ("combinatorial cropping").

The geometric part (expand, crop, resize to S x S, flip) is one affine map from the output grid to
the source image, so an image and its masks are warped once at output size (a 4x expanded COCO
image's masks are never materialised). Every random draw is a function of (seed, epoch, index):
resumed runs see the same samples.

Who has masks (:func:`split_supervision`): every training image keeps its boxes; the images named
by ``data.masks_for`` keep their masks too, every other image's masks are dropped before training starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from wsis import masks as mask_ops
from wsis.data.images import load_image
from wsis.detectors.maskrcnn import DetectorDataConfig as ColourConfig, jitter_colour
from wsis.errors import InputError
from wsis.methods.dasnet.config import DASNetDataConfig, DASNetSegmentationConfig
from wsis.methods.dasnet.segmentation import IGNORE, mask_targets, sample_boxes
from wsis.structures import ImageRecord, Instances, RecordSet

MEAN_RGB = (123.675, 116.28, 103.53)  # SSD's expand canvas colour (ImageNet mean)


# ---------------------------------------------------------------- supervision

def mask_image_ids(records: RecordSet, masks_for: str) -> set[int]:
    """Image ids whose masks training may use: ``"all"``, ``"N"`` (the first N by ascending image id)
    or a file of image ids / file names, one per line (``#`` comments)."""
    ids = sorted(r.image_id for r in records)
    text = str(masks_for).strip()
    if text == "all":
        return set(ids)
    if text.isdigit():
        n = int(text)
        if n > len(ids):
            raise InputError("masks_for", f"{n} mask images asked for, the dataset has {len(ids)} images")
        return set(ids[:n])
    path = Path(text)
    if not path.is_file():
        raise InputError("masks_for", f"must be 'all', a number or a list file; {text!r} is none of these")
    by_name = {r.file_name: r.image_id for r in records}
    known = set(ids)
    chosen = set()
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        item = line.split("#")[0].strip()
        if not item:
            continue
        if item.isdigit() and int(item) in known:
            chosen.add(int(item))
        elif item in by_name:
            chosen.add(by_name[item])
        else:
            raise InputError(f"{path}:{line_no}", f"{item!r} is not an image id or file name of the dataset")
    return chosen


def _boxes_only(record: ImageRecord) -> ImageRecord:
    gt = record.gt
    keep = ~record.crowd
    inst = Instances(gt.image_size, gt.boxes[keep], gt.labels[keep])
    return ImageRecord(record.image_id, record.path, record.width, record.height, tags=record.tags, gt=inst,
                       file_name=record.file_name)


def _with_masks(record: ImageRecord) -> ImageRecord:
    if not record.gt.has_masks:
        raise InputError(record.path, "chosen as a mask image (masks_for) but has no ground-truth masks")
    inst = record.gt.select(~record.crowd)
    return ImageRecord(record.image_id, record.path, record.width, record.height, tags=record.tags, gt=inst,
                       file_name=record.file_name)


def split_supervision(records: RecordSet, masks_for: str) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(box records of every image, mask records of the chosen ones): crowd regions dropped, and no
    mask of an unchosen image survives."""
    if len(records) == 0:
        raise InputError(records.name or "dataset", "no training images")
    for r in records:
        if r.gt is None:
            raise InputError(r.path, "no ground-truth boxes: DASNet trains its detector on the boxes of every image")
    chosen = mask_image_ids(records, masks_for)
    boxes = [_boxes_only(r) for r in records]
    masks = [_with_masks(r) for r in records if r.image_id in chosen]
    if not masks:
        raise InputError("masks_for", "no training image with masks: the segmentation module needs a few")
    return boxes, masks


# ---------------------------------------------------------------- geometry

@dataclass
class Warp:
    """Output pixel (u, v) of the S x S input <- source pixel (x0 + u * sx, y0 + v * sy), then mirrored if ``flip``."""

    x0: float
    y0: float
    sx: float
    sy: float
    size: int
    flip: bool = False

    def matrix(self) -> np.ndarray:
        """The source -> output affine map (2 x 3) for ``cv2.warpAffine``."""
        a, c = 1.0 / self.sx, -self.x0 / self.sx
        if self.flip:
            a, c = -a, self.size - c
        return np.array([[a, 0.0, c], [0.0, 1.0 / self.sy, -self.y0 / self.sy]], np.float64)

    def boxes(self, boxes: np.ndarray) -> np.ndarray:
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        x = (b[:, [0, 2]] - self.x0) / self.sx
        y = (b[:, [1, 3]] - self.y0) / self.sy
        if self.flip:
            x = self.size - x[:, ::-1]
        out = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
        return np.clip(out, 0, self.size).astype(np.float32)


def resize_warp(height: int, width: int, size: int) -> Warp:
    """The plain test-time resize to S x S."""
    return Warp(0.0, 0.0, width / size, height / size, size)


def _iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def random_warp(height: int, width: int, boxes: np.ndarray, cfg: DASNetDataConfig, rng: np.random.Generator) -> Warp:
    """SSD's expand + crop + flip as one :class:`Warp` (the crop keeps a box's centre when possible)."""
    # Expand: the image placed at (ox, oy) on a canvas r times its size.
    r = rng.uniform(1.0, cfg.max_expand) if cfg.max_expand > 1 and rng.random() < cfg.expand_prob else 1.0
    cw, ch = width * r, height * r
    ox, oy = rng.uniform(0, cw - width), rng.uniform(0, ch - height)
    win = (0.0, 0.0, cw, ch)
    if cfg.crop:
        shifted = np.asarray(boxes, np.float64).reshape(-1, 4) + [ox, oy, ox, oy]
        min_iou = rng.choice([-1.0, 0.1, 0.3, 0.5, 0.7, 0.9, None])   # None: keep the whole canvas
        if min_iou is not None:
            for _ in range(50):
                w = rng.uniform(cfg.min_crop, 1.0) * cw
                h = rng.uniform(cfg.min_crop, 1.0) * ch
                if not 0.5 <= h / w <= 2.0:
                    continue
                x, y = rng.uniform(0, cw - w), rng.uniform(0, ch - h)
                cand = np.array([x, y, x + w, y + h])
                if len(shifted):
                    if _iou_one(cand, shifted).max() < min_iou:
                        continue
                    centres = (shifted[:, :2] + shifted[:, 2:]) / 2
                    if not ((centres >= cand[:2]) & (centres <= cand[2:])).all(axis=1).any():
                        continue
                win = tuple(cand)
                break
    flip = bool(cfg.hflip and rng.random() < 0.5)
    return Warp(win[0] - ox, win[1] - oy, (win[2] - win[0]) / cfg.size, (win[3] - win[1]) / cfg.size, cfg.size, flip)


def warp_image(image: np.ndarray, warp: Warp) -> np.ndarray:
    return cv2.warpAffine(image, warp.matrix(), (warp.size, warp.size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=MEAN_RGB)


def warp_masks(masks: np.ndarray, warp: Warp) -> np.ndarray:
    """(N, H, W) bool -> (N, S, S) bool (nearest neighbour)."""
    out = np.zeros((len(masks), warp.size, warp.size), bool)
    m = warp.matrix()
    for i, mask in enumerate(masks):
        out[i] = cv2.warpAffine(mask.astype(np.uint8), m, (warp.size, warp.size), flags=cv2.INTER_NEAREST,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0
    return out


def photometric(x: torch.Tensor, cfg: DASNetDataConfig, rng: np.random.Generator) -> torch.Tensor:
    """SSD-style colour distortion plus additive Gaussian noise on a (3, S, S) [0, 1] image."""
    x = jitter_colour(x, rng, ColourConfig(hflip=False, brightness=cfg.brightness, contrast=cfg.contrast,
                                           saturation=cfg.saturation))
    if cfg.noise_std > 0:
        noise = torch.from_numpy(rng.normal(0.0, cfg.noise_std, x.shape).astype(np.float32))
        x = (x + noise).clamp_(0.0, 1.0)
    return x


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def _kept(boxes: np.ndarray, min_side: float = 2.0) -> np.ndarray:
    return ((boxes[:, 2] - boxes[:, 0]) >= min_side) & ((boxes[:, 3] - boxes[:, 1]) >= min_side)


class _Augmented(Dataset):
    """``repeat`` lists every record that many times per epoch (each copy augmented differently): a
    handful of mask images would otherwise make one-step epochs, each ending with a checkpoint."""

    def __init__(self, records: Sequence[ImageRecord], label_of: dict[int, int], cfg: DASNetDataConfig,
                 seed: int, augment: bool = True, repeat: int = 1) -> None:
        self.records, self.label_of, self.cfg, self.seed, self.augment = list(records), label_of, cfg, seed, augment
        self.repeat = max(1, int(repeat))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records) * self.repeat

    def _draw(self, index: int) -> tuple[ImageRecord, np.ndarray, Warp, np.random.Generator]:
        record = self.records[index % len(self.records)]
        image = load_image(record.path)
        if image.shape[:2] != record.gt.image_size:
            raise InputError(record.path, f"annotations of size {record.gt.image_size} for an image of {image.shape[:2]}")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        h, w = image.shape[:2]
        warp = random_warp(h, w, record.gt.boxes, self.cfg, rng) if self.augment else resize_warp(h, w, self.cfg.size)
        return record, image, warp, rng

    def _image(self, image: np.ndarray, warp: Warp, rng: np.random.Generator) -> torch.Tensor:
        x = to_tensor(warp_image(image, warp))
        return photometric(x, self.cfg, rng) if self.augment else x


class DetectionDataset(_Augmented):
    """(image (3, S, S), {"boxes" S-pixel xyxy, "labels" 1..K}) for the detector stage."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record, image, warp, rng = self._draw(index)
        boxes = warp.boxes(record.gt.boxes)
        keep = _kept(boxes)
        labels = np.asarray([self.label_of[int(c)] for c in record.gt.labels], np.int64)[keep]
        return self._image(image, warp, rng), {"boxes": torch.from_numpy(boxes[keep]),
                                               "labels": torch.from_numpy(labels)}


@dataclass
class SegSample:
    image: torch.Tensor           # (3, S, S)
    boxes: torch.Tensor           # (B, 4) the attended class-specific boxes, normalised to [0, 1]
    semantic: torch.Tensor        # (S, S) uint8: 1 class pixel, 0 other, IGNORE outside the boxes
    rois: torch.Tensor            # (M, 4) sampled boxes, S pixels
    positive: torch.Tensor        # (M,) bool
    targets: torch.Tensor         # (P, R, R) uint8 mask targets of the positive rois


class SegmentationDataset(_Augmented):
    """One class-specific sample per mask image and step: a random class present after augmentation,
    a random non-empty subset of its instances' boxes (all of them when ``random_boxes`` is off), the
    semantic target within those boxes and p/n sampled boxes per attended instance."""

    def __init__(self, records: Sequence[ImageRecord], label_of: dict[int, int], cfg: DASNetDataConfig,
                 seg: DASNetSegmentationConfig, seed: int, augment: bool = True, repeat: int = 1) -> None:
        super().__init__(records, label_of, cfg, seed, augment, repeat)
        self.seg = seg

    def __getitem__(self, index: int) -> SegSample:
        record, image, warp, rng = self._draw(index)
        s = self.cfg.size
        masks = warp_masks(record.gt.mask_array(), warp)
        present = masks.any(axis=(1, 2))
        labels = record.gt.labels[present]
        masks = masks[present]
        x = self._image(image, warp, rng)
        if len(labels) == 0:  # the crop kept no instance: nothing to attend, everything ignored
            return SegSample(x, torch.zeros((0, 4)), torch.full((s, s), IGNORE, dtype=torch.uint8),
                             torch.zeros((0, 4)), torch.zeros(0, dtype=torch.bool),
                             torch.zeros((0, self.seg.roi_size, self.seg.roi_size), dtype=torch.uint8))
        boxes = mask_ops.to_bbox(mask_ops.encode_many(masks)).astype(np.float32)
        cls = rng.choice(np.unique(labels))
        members = np.nonzero(labels == cls)[0]
        count = int(rng.integers(1, len(members) + 1)) if self.cfg.random_boxes else len(members)
        chosen = np.sort(rng.choice(members, count, replace=False))
        inside = np.zeros((s, s), bool)
        for b in boxes[chosen]:
            x1, y1 = int(np.floor(b[0])), int(np.floor(b[1]))
            inside[y1:int(np.ceil(b[3])), x1:int(np.ceil(b[2]))] = True
        semantic = np.where(inside, masks[members].any(axis=0), IGNORE).astype(np.uint8)
        rois, positive, matched = sample_boxes(boxes[chosen], rng, self.seg.positives, self.seg.negatives, s,
                                               self.seg.fg_iou)
        gt_masks = torch.from_numpy(masks[chosen])
        targets = mask_targets(gt_masks, torch.from_numpy(rois[positive]), torch.from_numpy(matched[positive]),
                               self.seg.roi_size)
        return SegSample(x, torch.from_numpy(boxes[chosen] / s), torch.from_numpy(semantic), torch.from_numpy(rois),
                         torch.from_numpy(positive), targets)


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def collate_segmentation(batch: Sequence[SegSample]) -> list[SegSample]:
    return list(batch)
