"""Each module's outputs on one image: the calibrated supervision it gives the next module (with the
image's tags, :func:`label_image`) and its test-time predictions (without tags, :func:`predict_image`).

Both run at one scale (shorter side ``calibration.test_size`` / ``test.size``, longer side capped at
``data.max_size``) and return results at the image's own resolution.

* classification: x^c of every proposal -> top class c_i (among the image's tags when labelling a
  training image) and its softmax probability s_i ->
  Excitation BP to the RoI features (:func:`wsis.cues.excitation.excitation_maps`) ->
  :func:`~wsis.methods.labelpenet.calibration.calibrate` with one candidate per class;
* detection: the RPN's proposals through the box head: the same, with the head's top foreground
  class, NMS on the regressed boxes, and several candidates per class;
* refinement (and segmentation): Mask R-CNN's detections without NMS; each kept detection's group
  sums the pasted mask probabilities of the detections it suppresses (3.2), then the CRF.

At test time the tags are replaced by the classes the module predicts: image probabilities
softmax(s^1) >= ``test.class_threshold`` (classification; the top class always), a detection
scored >= it (detection). The classification module's predictions are its calibrated candidates
(boxes and masks), scored by image probability x candidate score; the detection module's are
Faster R-CNN's detections with their boxes as masks; the refinement and segmentation modules'
Mask R-CNN's, the segmentation module's masks refined by the CRF when ``test.refine_masks``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn

from wsis.cues.crf import dense_crf
from wsis.cues.excitation import excitation_maps
from wsis.masks import resize_nonempty
from wsis.methods.labelpenet.calibration import Candidates, box_mask, calibrate
from wsis.methods.labelpenet.config import LabelPENetConfig
from wsis.methods.labelpenet.data import image_tensor, resize_shorter
from wsis.methods.labelpenet.model import LabelPENet, classification_scores


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)


def to_original(c: Candidates, scale: float, height: int, width: int) -> Candidates:
    masks = resize_nonempty(np.asarray(c.masks, bool), height, width) if len(c) else np.zeros((0, height, width), bool)
    return Candidates(masks, c.boxes / scale, c.labels, c.weights)


def _calibrate(cfg: LabelPENetConfig, image: np.ndarray, tags: np.ndarray, max_instances: int, **kw) -> Candidates:
    cal = cfg.calibration
    return calibrate(image, tags=tags, nms_iou=cal.nms_iou, max_instances=max_instances,
                     min_relative_score=cal.min_relative_score, crf=cfg.crf, **kw)


# ---------------------------------------------------------------- per module, at the network's scale

def _top_class(probs: torch.Tensor, tags: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each proposal's top class and its probability; among the tagged classes when ``tags`` are
    known (labelling a training image: ours, so that every tag gets an object candidate even where
    an untagged class wins the proposals)."""
    if tags is not None and tags.any():
        allowed = torch.as_tensor(tags, dtype=torch.bool, device=probs.device)
        probs = torch.where(allowed[None], probs, torch.zeros_like(probs))
    return probs.max(dim=1)


@torch.no_grad()
def classification_view(net: LabelPENet, x: torch.Tensor, proposals: torch.Tensor,
                        tags: np.ndarray | None = None) -> dict:
    """Proposal classes, scores, attention maps and the image probabilities softmax(s^1)."""
    with evaluating(net):
        out = net.classification_outputs([x], [proposals])
        _, s1 = classification_scores(out["xc"], out["xp"], out["segments"], 1)
        scores, classes = _top_class(out["xc"].softmax(dim=1), tags)
        maps = excitation_maps(net.classification.head, net.classification.class_logits, out["pooled"], classes, scores)
    return {"boxes": proposals.cpu().numpy(), "scores": scores.cpu().numpy(), "classes": classes.cpu().numpy(),
            "maps": maps.cpu().numpy(), "image_probs": s1.softmax(dim=1)[0].cpu().numpy()}


@torch.no_grad()
def detection_view(net: LabelPENet, x: torch.Tensor, tags: np.ndarray | None = None) -> dict:
    """The RPN's proposals with the box head's top foreground class, its probability, the
    class-specific regressed box and the proposal's attention map."""
    model = net.detection
    with evaluating(model):
        images, _ = model.transform([x])
        features = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, features)
        rh = model.roi_heads
        pooled = rh.box_roi_pool(features, proposals, images.image_sizes)
        logits, deltas = rh.box_predictor(rh.box_head(pooled))
        scores, classes = _top_class(logits.softmax(dim=1)[:, 1:], tags)
        regressed = rh.box_coder.decode(deltas, proposals).reshape(len(logits), -1, 4)
        regressed = regressed[torch.arange(len(logits)), classes + 1]
        h, w = x.shape[-2:]
        regressed[:, 0::2] = regressed[:, 0::2].clamp(0, w)
        regressed[:, 1::2] = regressed[:, 1::2].clamp(0, h)
        head = nn.ModuleList([rh.box_head, rh.box_predictor])
        maps = excitation_maps(head, lambda p: rh.box_predictor.cls_score(rh.box_head(p)), pooled, classes + 1, scores)
    return {"boxes": proposals[0].cpu().numpy(), "regressed": regressed.cpu().numpy(), "scores": scores.cpu().numpy(),
            "classes": classes.cpu().numpy(), "maps": maps.cpu().numpy()}


@torch.no_grad()
def mask_detections(model: nn.Module, x: torch.Tensor, nms: float | None, score_threshold: float,
                    detections: int) -> dict:
    """Mask R-CNN's detections (``nms=None``: none suppressed) with pasted mask probabilities."""
    rh = model.roi_heads
    saved = rh.nms_thresh, rh.score_thresh, rh.detections_per_img
    rh.nms_thresh = 1.0 if nms is None else nms
    rh.score_thresh, rh.detections_per_img = score_threshold, detections
    try:
        with evaluating(model):
            out = model([x])[0]
    finally:
        rh.nms_thresh, rh.score_thresh, rh.detections_per_img = saved
    return {"boxes": out["boxes"].cpu().numpy(), "scores": out["scores"].cpu().numpy(),
            "classes": out["labels"].cpu().numpy() - 1,
            "masks": out["masks"][:, 0].cpu().numpy() if "masks" in out else None}


# ---------------------------------------------------------------- supervision for the next module

def _scaled(cfg: LabelPENetConfig, image: np.ndarray, size: int, device: torch.device) -> tuple[np.ndarray, torch.Tensor, float]:
    small, scale = resize_shorter(image, size, cfg.data.max_size)
    return small, image_tensor(small).to(device), scale


def label_image(net: LabelPENet, module: str, image: np.ndarray, tags: np.ndarray, proposals: np.ndarray | None,
                cfg: LabelPENetConfig, device: torch.device) -> Candidates:
    """Module ``module``'s calibrated instances of a training image with 0/1 ``tags`` (C,)."""
    small, x, scale = _scaled(cfg, image, cfg.calibration.test_size, device)
    h, w = image.shape[:2]
    cal = cfg.calibration
    if module == "classification":
        v = classification_view(net, x, torch.as_tensor(proposals * scale, dtype=torch.float32, device=device), tags)
        c = _calibrate(cfg, small, tags, 1, boxes=v["boxes"], scores=v["scores"], classes=v["classes"], maps=v["maps"])
    elif module == "detection":
        v = detection_view(net, x, tags)
        c = _calibrate(cfg, small, tags, cal.max_instances, boxes=v["boxes"], scores=v["scores"], classes=v["classes"],
                       maps=v["maps"], nms_boxes=v["regressed"])
    else:
        v = mask_detections(getattr(net, module), x, None, cfg.test.score_threshold, 10 * cfg.test.detections_per_image)
        c = _calibrate(cfg, small, tags, cal.max_instances, boxes=v["boxes"], scores=v["scores"], classes=v["classes"],
                       maps=v["masks"], pasted=True, heat=False)
    return to_original(c, scale, h, w)


# ---------------------------------------------------------------- test-time predictions

def _box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros((0, height, width), bool)
    return np.stack([box_mask(b, height, width) for b in boxes])


def crf_masks(image: np.ndarray, probs: np.ndarray, cfg: LabelPENetConfig) -> np.ndarray:
    """Masks of K detections from their pasted probabilities (K, H, W) refined by the CRF, with the
    background ``max(0, 1 - sum_k p_k)``."""
    if len(probs) == 0:
        return probs.astype(bool)
    labels = dense_crf(image, np.concatenate([np.maximum(0.0, 1.0 - probs.sum(axis=0))[None], probs]), cfg.crf)
    return np.stack([labels == k + 1 for k in range(len(probs))])


def predict_image(net: LabelPENet, module: str, image: np.ndarray, proposals: np.ndarray | None,
                  cfg: LabelPENetConfig, device: torch.device) -> Candidates:
    """Module ``module``'s predictions (weights = scores) on an untagged image."""
    t = cfg.test
    small, x, scale = _scaled(cfg, image, t.size, device)
    h, w = image.shape[:2]
    if module == "classification":
        v = classification_view(net, x, torch.as_tensor(proposals * scale, dtype=torch.float32, device=device))
        probs = v["image_probs"]
        tags = (probs >= t.class_threshold) | (np.arange(len(probs)) == probs.argmax())
        c = _calibrate(cfg, small, tags, 1, boxes=v["boxes"], scores=v["scores"], classes=v["classes"], maps=v["maps"])
        c.weights = c.weights * probs[c.labels]
        return to_original(c, scale, h, w)
    if module == "detection":
        model = net.detection
        rh = model.roi_heads
        saved = rh.nms_thresh, rh.score_thresh, rh.detections_per_img
        rh.nms_thresh, rh.score_thresh, rh.detections_per_img = t.nms_threshold, t.score_threshold, t.detections_per_image
        try:
            with torch.no_grad(), evaluating(model):
                out = model([x])[0]
        finally:
            rh.nms_thresh, rh.score_thresh, rh.detections_per_img = saved
        boxes = out["boxes"].cpu().numpy() / scale
        return Candidates(_box_masks(boxes, h, w), boxes, out["labels"].cpu().numpy() - 1, out["scores"].cpu().numpy())
    v = mask_detections(getattr(net, module), x, t.nms_threshold, t.score_threshold, t.detections_per_image)
    probs = v["masks"]
    if module == "segmentation" and t.refine_masks:
        masks = crf_masks(small, probs, cfg)
    else:
        masks = probs >= t.mask_threshold
    c = Candidates(masks, v["boxes"], v["classes"], v["scores"])
    return to_original(c, scale, h, w)
