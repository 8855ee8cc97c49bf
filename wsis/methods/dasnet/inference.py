"""DASNet inference (``papers/003``, 3.5): the image resized to S x S, detections B, then

* instances: each detected box alone is attended (Eq. 1 with one box), segmented, and its
  position-sensitive maps assembled inside it; the inside probability, resized to the box in the
  original image, is cut at ``mask_threshold``; the score is the detection score;
* semantic: per detected class, all its boxes are attended together and the semantic head's
  foreground probability is kept inside them; each pixel takes the class of highest probability
  when above 0.5 (the max over class-specific maps), background elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from wsis.methods.dasnet.attention import attend
from wsis.methods.dasnet.config import DASNetTestConfig
from wsis.methods.dasnet.data import resize_warp, to_tensor, warp_image
from wsis.methods.dasnet.model import DASNet
from wsis.methods.dasnet.segmentation import assemble, semantic_map


@dataclass
class Detections:
    boxes: np.ndarray    # (N, 4) xyxy in original image pixels
    labels: np.ndarray   # (N,) 0-based class indices
    scores: np.ndarray
    boxes_net: torch.Tensor  # (N, 4) in network input pixels


def network_input(image: np.ndarray, size: int) -> tuple[torch.Tensor, float, float]:
    """(1, 3, S, S) input and the (x, y) factors from network pixels to image pixels."""
    h, w = image.shape[:2]
    return to_tensor(warp_image(image, resize_warp(h, w, size)))[None], w / size, h / size


def detect(model: DASNet, x: torch.Tensor, sx: float, sy: float, cfg: DASNetTestConfig) -> Detections:
    out = model.detector.detect(x)[0]
    keep = out["scores"] >= cfg.score_threshold
    order = torch.argsort(out["scores"][keep], descending=True)[: cfg.detections_per_image]
    boxes = out["boxes"][keep][order].float()
    scale = torch.tensor([sx, sy, sx, sy], device=boxes.device)
    return Detections((boxes * scale).cpu().numpy(), (out["labels"][keep][order] - 1).cpu().numpy(),
                      out["scores"][keep][order].cpu().numpy(), boxes)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _repeat(features: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    return [f.expand(n, -1, -1, -1) for f in features]


@torch.no_grad()
def instance_probs(model: DASNet, features: list[torch.Tensor], boxes_net: torch.Tensor, cfg: DASNetTestConfig
                   ) -> torch.Tensor:
    """(N, R, R) inside probabilities of each detected box, attended on its own."""
    net, size = model.segmenters["instance"], model.detector.size
    norm = boxes_net / size
    out = []
    for part in _chunks(len(boxes_net), cfg.chunk):
        n = part.stop - part.start
        maps = net(attend(_repeat(features, n), [b[None] for b in norm[part]]))
        rois = torch.cat([torch.arange(n, device=maps.device, dtype=torch.float32)[:, None], boxes_net[part]], 1)
        assembled = assemble(maps, rois, model.k, model.roi_size, maps.shape[-1] / size)
        out.append(assembled.softmax(dim=1)[:, 0])
    return torch.cat(out) if out else torch.zeros((0, model.roi_size, model.roi_size))


def paste(prob: np.ndarray, box: np.ndarray, height: int, width: int, threshold: float) -> np.ndarray:
    """An (R, R) probability map resized into ``box`` of an H x W image, cut at ``threshold``."""
    mask = np.zeros((height, width), bool)
    x1, y1 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x2, y2 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
    if x2 <= x1 or y2 <= y1:
        return mask
    # the map covers the float box; sample it at the integer pixels' centres
    bw, bh = max(box[2] - box[0], 1e-3), max(box[3] - box[1], 1e-3)
    r = prob.shape[0]
    xs = ((np.arange(x1, x2) + 0.5 - box[0]) / bw * r - 0.5).astype(np.float32)
    ys = ((np.arange(y1, y2) + 0.5 - box[1]) / bh * r - 0.5).astype(np.float32)
    mx, my = np.meshgrid(xs, ys)
    mask[y1:y2, x1:x2] = cv2.remap(prob.astype(np.float32), mx, my, cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE) > threshold
    return mask


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W) bool: each box filled (the boxes-as-masks baseline)."""
    masks = np.zeros((len(boxes), height, width), bool)
    for i, b in enumerate(boxes):
        x1, y1 = max(int(np.floor(b[0])), 0), max(int(np.floor(b[1])), 0)
        masks[i, y1:int(np.ceil(b[3])), x1:int(np.ceil(b[2]))] = True
    return masks


@torch.no_grad()
def semantic_labels(model: DASNet, features: list[torch.Tensor], det: Detections, height: int, width: int,
                    category_ids: list[int], cfg: DASNetTestConfig) -> np.ndarray:
    """(H, W) category ids (0 background) from the class-specific semantic maps."""
    net, size = model.segmenters["semantic"], model.detector.size
    classes = sorted(set(int(c) for c in det.labels))
    if not classes:
        return np.zeros((height, width), np.int64)
    probs, inside = [], []
    for part in _chunks(len(classes), cfg.chunk):
        group = classes[part]
        boxes = [det.boxes_net[torch.as_tensor(det.labels == c)] / size for c in group]
        logits = net(attend(_repeat(features, len(group)), boxes))
        fg = torch.nn.functional.interpolate(logits, size=(height, width), mode="bilinear",
                                             align_corners=False).softmax(dim=1)[:, 1]
        probs.append(fg.cpu().numpy())
        inside += [box_masks(det.boxes[det.labels == c], height, width).any(axis=0) for c in group]
    return semantic_map(np.concatenate(probs), np.stack(inside), [category_ids[c] for c in classes])
