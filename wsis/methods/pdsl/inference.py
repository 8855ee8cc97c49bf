"""PDSL inference on one image (``papers/002``, section 4.3): multi-scale and flipped test, NMS, masks.

1. For each test scale (shorter side; longer side at most ``max_size``) and, with ``flip``, its
   mirror image: the detection branch scores every proposal (mean of the refinement heads) and
   regresses a box per class; boxes are mapped back to original coordinates. Scores and boxes are
   averaged over the passes ("the test scores are the average of scales ... and flips").
2. Per class: (proposal, class) pairs with score >= ``score_threshold``, the ``pre_nms_top_n`` best,
   NMS at ``nms_threshold`` (0.5), then the ``detections_per_image`` best over all classes.
3. Masks (the paper does not detail mask inference; Mask R-CNN's rule): the segmentation branch runs
   on the kept boxes at every pass; the last class-specific head's channel of the detected class (the
   class-agnostic head when n^m = 0) is averaged over the passes (mirrored back), pasted into the
   image and thresholded at ``mask_threshold``. A detection whose mask comes out empty is kept (it
   scores as a miss in mask metrics) so that the detection branch's output stays whole for box AP.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import batched_nms

from wsis.detectors.wsddn import decode_boxes
from wsis.methods.pdsl.config import PDSLTestConfig
from wsis.methods.pdsl.data import flip_boxes, resize_image, resize_scale
from wsis.methods.pdsl.model import PDSLNet, pad_images


@dataclass
class Detections:
    """K detections of one image: xyxy ``boxes`` (original pixels), 0-based ``classes``, ``scores``
    and (K, H, W) ``masks``: bool, or float32 probabilities when asked for ``soft`` masks."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray


def _passes(cfg: PDSLTestConfig) -> list[tuple[int, bool]]:
    return [(s, f) for s in cfg.scales for f in ((False, True) if cfg.flip else (False,))]


def select_detections(scores: torch.Tensor, boxes: torch.Tensor, cfg: PDSLTestConfig
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, C) scores and (P, C, 4) boxes -> kept (boxes (K, 4), classes (K,), scores (K,)), best first."""
    p, c = scores.shape
    flat = scores.flatten()
    candidates = torch.nonzero(flat >= cfg.score_threshold).flatten()
    candidates = candidates[torch.argsort(flat[candidates], descending=True, stable=True)[: cfg.pre_nms_top_n]]
    classes = candidates % c
    props = candidates // c
    cand_boxes = boxes[props, classes]
    keep = batched_nms(cand_boxes, flat[candidates], classes, cfg.nms_threshold)[: cfg.detections_per_image]
    return cand_boxes[keep], classes[keep], flat[candidates][keep]


@torch.no_grad()
def detect_and_segment(model: PDSLNet, image: np.ndarray, proposals: np.ndarray, cfg: PDSLTestConfig,
                       device: torch.device, soft: bool = False) -> Detections:
    """Detections with masks for an RGB uint8 (H, W, 3) image and its (P, 4) proposals; ``soft``
    returns the pasted mask probabilities instead of thresholding them (for threshold studies)."""
    model.eval()
    h, w = image.shape[:2]
    props = torch.as_tensor(proposals, dtype=torch.float32).reshape(-1, 4)
    if len(props) == 0:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32),
                          np.zeros((0, h, w), bool))
    views = []
    score_sum, box_sum = None, None
    for shorter, flip in _passes(cfg):
        scale = resize_scale(h, w, shorter, cfg.max_size)
        small = resize_image(image, scale)
        x = torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1)
        boxes = props * scale
        if flip:
            x, boxes = x.flip(-1), flip_boxes(boxes, small.shape[1])
        x = pad_images([model.backbone.normalize(x)], model.backbone.stride).to(device)
        feats, scores, deltas = model.infer(x, [boxes.to(device)])
        if deltas is None:
            found = boxes.to(device)[:, None].expand(-1, scores.shape[1], -1)
        else:
            found = decode_boxes(deltas, boxes.to(device))
        found = found.clamp_min(0)
        found[..., 0::2] = found[..., 0::2].clamp_max(small.shape[1])
        found[..., 1::2] = found[..., 1::2].clamp_max(small.shape[0])
        if flip:
            found = flip_boxes(found.reshape(-1, 4), small.shape[1]).reshape(found.shape)
        found = found / scale
        score_sum = scores if score_sum is None else score_sum + scores
        box_sum = found if box_sum is None else box_sum + found
        views.append((feats, scale, flip, small.shape[1]))
    n = len(views)
    boxes, classes, scores = select_detections(score_sum / n, box_sum / n, cfg)
    if len(boxes) == 0:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32),
                          np.zeros((0, h, w), bool))
    probs = None
    for feats, scale, flip, width in views:
        b = boxes * scale
        if flip:
            b = flip_boxes(b, width)
        rois = torch.cat([b.new_zeros(len(b), 1), b], dim=1)
        agnostic, specific = model.mask_logits(feats, rois, classes)
        m = (specific[-1] if len(specific) else agnostic).sigmoid()
        if flip:
            m = m.flip(-1)
        probs = m if probs is None else probs + m
    pasted = paste_masks_in_image((probs / n)[:, None], boxes, (h, w), padding=1)[:, 0]
    masks = pasted.float().cpu().numpy() if soft else (pasted > cfg.mask_threshold).cpu().numpy()
    return Detections(boxes.cpu().numpy().astype(np.float32), classes.cpu().numpy(),
                      scores.cpu().numpy().astype(np.float32), masks)
