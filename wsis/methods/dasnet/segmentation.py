"""The segmentation module (``papers/003``, 3.4): one deconvolution network over the class-specific
features F^l, with a semantic head (3.4.1) or a position-sensitive instance head (3.4.2).

* :class:`TopDownMerge` -- f_m (coarsest) is upsampled by a deconvolution to f_{m-1}'s size and
  channels, concatenated with it, and the result merged with f_{m-2} the same way down to f_1; then
  ``top_layers`` deconvolutions (x2 each) give the top features ("deconv1"). A deconvolution that
  misses the next level's size by a cell (SSD's 5 -> 3 -> 2 levels are not powers of two) is
  followed by a bilinear resize to it.
* Semantic: a two-channel (background, foreground) class-specific map; softmax loss with every pixel
  outside the class's boxes ignored (:func:`semantic_loss`); inference takes, per pixel, the class of
  highest foreground probability (:func:`semantic_map`).
* Instance: 2k^2 position-sensitive score maps (k x k inside maps, then k x k outside maps) from the
  top features; :func:`assemble` copies each box's k x k cells from their maps (FCIS-style); per box
  an instance score (mean over pixels of max(inside, outside), sigmoid cross-entropy against 1/0) and
  a softmax inside/outside mask loss over positive boxes against the ground-truth instance's mask,
  with equal weights (:func:`instance_losses`). Training boxes: p positives and n negatives per
  ground-truth box (:func:`sample_boxes`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, roi_align

IGNORE = 255


def _deconv(cin: int, cout: int) -> nn.Sequential:
    """x2 deconvolution + batch norm + ReLU (DeconvNet [25] normalises after every deconvolution)."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class TopDownMerge(nn.Module):
    """F^l (finest first, channels ``channels``) -> top features of ``top_channels`` at the finest
    level's stride / 2^top_layers."""

    def __init__(self, channels: Sequence[int], top_layers: int, top_channels: int) -> None:
        super().__init__()
        channels = list(channels)
        merged = [2 * c for c in channels[:-1]] + [channels[-1]]   # channels after each merge
        self.ups = nn.ModuleList(
            _deconv(merged[i + 1], channels[i]) for i in range(len(channels) - 1))
        top, c = [], merged[0]
        for _ in range(top_layers):
            top.append(_deconv(c, top_channels))
            c = top_channels
        if not top_layers:
            top += [nn.Conv2d(c, top_channels, 3, padding=1), nn.BatchNorm2d(top_channels), nn.ReLU(inplace=True)]
        self.top = nn.Sequential(*top)
        self.out_channels = top_channels

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for i in range(len(features) - 2, -1, -1):
            up = self.ups[i](x)
            if up.shape[-2:] != features[i].shape[-2:]:
                up = F.interpolate(up, size=features[i].shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([up, features[i]], dim=1)
        return self.top(x)


class SegmentationNet(nn.Module):
    """Merge + head: ``task="semantic"`` -> (N, 2, H, W) logits; ``"instance"`` -> (N, 2k^2, H, W)."""

    def __init__(self, channels: Sequence[int], task: str, top_layers: int, top_channels: int, k: int) -> None:
        super().__init__()
        if task not in ("semantic", "instance"):
            raise ValueError(f"unknown segmentation task {task!r}")
        self.task, self.k = task, k
        self.merge = TopDownMerge(channels, top_layers, top_channels)
        outputs = 2 if task == "semantic" else 2 * k * k
        self.head = nn.Sequential(nn.Conv2d(top_channels, top_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(top_channels), nn.ReLU(inplace=True),
                                  nn.Conv2d(top_channels, outputs, 1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.head(self.merge(features))


# ---------------------------------------------------------------- semantic (3.4.1)

def semantic_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise softmax loss over (background, foreground); ``target`` (N, H, W) holds 0/1 and
    :data:`IGNORE` outside the class's boxes. Logits are resized to the target's size first."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    if not (target != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target.long(), ignore_index=IGNORE)


def semantic_map(fg_prob: np.ndarray, inside: np.ndarray, category_ids: Sequence[int]) -> np.ndarray:
    """3.5's max over class-specific maps: (C, H, W) foreground probabilities, (C, H, W) bool "inside a
    box of that class" -> (H, W) category ids, 0 (background) where no class is inside a box with
    probability above 0.5."""
    h, w = fg_prob.shape[-2:]
    if len(category_ids) == 0:
        return np.zeros((h, w), np.int64)
    prob = np.where(inside, fg_prob, 0.0)
    best = prob.argmax(axis=0)
    ids = np.asarray(category_ids, np.int64)[best]
    return np.where(prob.max(axis=0) > 0.5, ids, 0)


# ---------------------------------------------------------------- instance (3.4.2)

def assemble(maps: torch.Tensor, rois: torch.Tensor, k: int, size: int, spatial_scale: float) -> torch.Tensor:
    """Position-sensitive assembly: ``maps`` (N, 2k^2, H, W) (inside maps 0..k^2-1, outside maps
    k^2..2k^2-1, cell (i, j) at index i*k + j), ``rois`` (R, 5) as (sample index, x1, y1, x2, y2) in
    input pixels -> (R, 2, size, size) inside/outside scores, each output cell (i, j) of the box read
    from its own pair of maps."""
    if size % k:
        raise ValueError(f"roi size {size} must be a multiple of k = {k}")
    pooled = roi_align(maps, rois, output_size=size, spatial_scale=spatial_scale, sampling_ratio=2, aligned=True)
    cell = torch.arange(size, device=maps.device) * k // size
    index = (cell[:, None] * k + cell[None, :])                       # (size, size) map of each pixel
    index = torch.stack([index, index + k * k])[None].expand(len(rois), -1, -1, -1)
    return pooled.gather(1, index)


def instance_scores(assembled: torch.Tensor) -> torch.Tensor:
    """Per box: the mean over its pixels of max(inside, outside) (a logit)."""
    return assembled.max(dim=1).values.flatten(1).mean(dim=1)


def instance_losses(assembled: torch.Tensor, positive: torch.Tensor, mask_targets: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
    """Equal-weight losses of 3.4.2: ``loss_score`` (sigmoid cross-entropy of the instance score
    against 1 for positives and 0 for negatives) and ``loss_mask`` (softmax over inside/outside per
    pixel of the positive boxes, against ``mask_targets`` (P, size, size) 0/1, one per positive in
    order)."""
    score = F.binary_cross_entropy_with_logits(instance_scores(assembled), positive.float())
    pos = assembled[positive]
    if len(pos) == 0:
        mask = assembled.sum() * 0.0
    else:
        # channel 0 = inside: target 1 (inside) -> class 0, target 0 -> class 1
        mask = F.cross_entropy(pos, (1 - mask_targets).long())
    return {"loss_score": score, "loss_mask": mask}


def label_boxes(boxes: torch.Tensor, gt: torch.Tensor, fg_iou: float) -> tuple[torch.Tensor, torch.Tensor]:
    """3.5's rule: a box is positive when its IoU with some ground-truth box exceeds ``fg_iou``, and then
    belongs to the ground-truth box of highest IoU; otherwise negative (matched -1)."""
    if len(gt) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool), torch.full((len(boxes),), -1, dtype=torch.long)
    iou = box_iou(boxes, gt)
    best, matched = iou.max(dim=1)
    positive = best > fg_iou
    return positive, torch.where(positive, matched, torch.full_like(matched, -1))


def _jitter(box: np.ndarray, rng: np.random.Generator, shift: float, scale: tuple[float, float], count: int) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    cx = (box[0] + box[2]) / 2 + rng.uniform(-shift, shift, count) * w
    cy = (box[1] + box[3]) / 2 + rng.uniform(-shift, shift, count) * h
    sw = w * np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]), count))
    sh = h * np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]), count))
    return np.stack([cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2], axis=1)


def sample_boxes(gt: np.ndarray, rng: np.random.Generator, p: int, n: int, image_size: int, fg_iou: float,
                 tries: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p positive and n negative boxes per ground-truth box (G, 4) of a ``image_size`` square input,
    labelled by :func:`label_boxes`: positives are drawn near their box (small shifts and scales),
    negatives are shifted or rescaled copies of it that match no ground-truth box (so that the score
    maps learn position, 3.4.2), with uniform random boxes as a fallback. Returns boxes (M, 4) float32,
    positive (M,) bool, matched ground-truth index (M,) (-1 for negatives). Positives that cannot be
    drawn are replaced by the ground-truth box itself."""
    out, pos, matched = [], [], []
    gt_t = torch.as_tensor(gt, dtype=torch.float32)
    for g, box in enumerate(gt):
        for want, shift, scale, count in ((True, 0.15, (0.8, 1.25), p), (False, 0.8, (0.4, 2.5), n)):
            got = 0
            for _ in range(tries):
                if got >= count:
                    break
                cand = _jitter(box, rng, shift, scale, count * 4)
                if not want:
                    side = rng.uniform(4, image_size, (count * 2, 2))
                    corner = rng.uniform(0, image_size, (count * 2, 2))
                    cand = np.concatenate([cand, np.concatenate([corner - side / 2, corner + side / 2], 1)])
                cand = np.clip(cand, 0, image_size)
                cand = cand[(cand[:, 2] - cand[:, 0] >= 2) & (cand[:, 3] - cand[:, 1] >= 2)]
                if not len(cand):
                    continue
                is_pos, match = label_boxes(torch.as_tensor(cand, dtype=torch.float32), gt_t, fg_iou)
                ok = (is_pos & (match == g)) if want else ~is_pos
                take = np.nonzero(ok.numpy())[0][: count - got]
                out.append(cand[take])
                pos += [want] * len(take)
                matched += [g if want else -1] * len(take)
                got += len(take)
            if want and got < count:
                out.append(np.repeat(box[None], count - got, axis=0))
                pos += [True] * (count - got)
                matched += [g] * (count - got)
    if not out:
        return np.zeros((0, 4), np.float32), np.zeros(0, bool), np.zeros(0, np.int64)
    return (np.concatenate(out).astype(np.float32), np.asarray(pos, bool), np.asarray(matched, np.int64))


def mask_targets(masks: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor, size: int) -> torch.Tensor:
    """(P, size, size) 0/1 targets: each positive box's view of its ground-truth instance mask
    (``masks`` (G, H, W) at input resolution, ``boxes`` (P, 4) in its pixels)."""
    if len(boxes) == 0:
        return torch.zeros((0, size, size), dtype=torch.uint8)
    rois = torch.cat([matched[:, None].float(), boxes.float()], dim=1)
    crops = roi_align(masks[:, None].float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=2,
                      aligned=True)
    return (crops[:, 0] >= 0.5).to(torch.uint8)
