"""Proposal calibration (``papers/001``, 3.2, Fig. 2): from scored proposals and their attention maps
to instance masks S, boxes B and weights W -- the next module's supervision.

Given P proposals (boxes in image pixels), each with its predicted class ``c_i`` (top of
softmax(x^c_i)), score ``s_i`` (that softmax value) and proposal attention map ``A_i`` (Excitation
BP down to its RoI-pooled features, :func:`wsis.cues.excitation.excitation_maps`):

1. per tagged class c, greedy NMS over the proposals labelled c by score: each kept proposal is an
   object candidate R^c, and the proposals it suppresses (IoU > ``nms_iou``), R^c included, are its
   group (:func:`instance_groups`); the classification module keeps one candidate per label, the
   detection and refinement modules up to ``max_instances`` whose score is at least
   ``min_relative_score`` x the class's best;
2. instance attention map of candidate k: ``A^k = sum of the group's A_i`` projected into their
   boxes (:func:`paste_sum`), divided by its maximum (ours: the maps of different instances then
   share a [0, 1] scale, which the background ``A_0 = max(0, 1 - sum_k A^k)`` needs);
3. object heat-map of class c: per-pixel sum over all proposals labelled c of ``s_i`` inside their
   boxes, divided by its maximum;
4. instance confident map: ``A^k * H^c`` (ours: "combine" is not specified; the product keeps a
   pixel only where both the instance's attention and the class's proposals agree);
5. dense CRF over ``[A_0, conf^1, ..., conf^K]`` (:func:`wsis.cues.crf.dense_crf`) -> one label per
   pixel -> mask S^k; B^k its bounding box; W^k = s of R^c (the candidate's classification score).

A candidate whose CRF mask is empty keeps the box of R^c and that box's pixels as its mask (ours:
the module's detection is still the best guess of where the object is).

The refinement module calibrates masks instead of attention maps (3.2, "object masks affiliated
with the predicted object location are summed"): :func:`calibrate` takes the maps already pasted
into the image (``pasted=True``).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

from wsis.cues.crf import CRFConfig, dense_crf


@dataclass
class Candidates:
    """K calibrated instances of one image: (K, H, W) bool masks, (K, 4) xyxy boxes, (K,) 0-based
    class indices and (K,) weights."""

    masks: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    weights: np.ndarray

    @staticmethod
    def empty(height: int, width: int) -> "Candidates":
        return Candidates(np.zeros((0, height, width), bool), np.zeros((0, 4), np.float32),
                          np.zeros(0, np.int64), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Group:
    label: int
    top: int
    members: np.ndarray


def instance_groups(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, tags: np.ndarray,
                    nms_iou: float, max_instances: int, min_relative_score: float) -> list[Group]:
    """Step 1 of the module docstring: the object candidates of every tagged class and the
    proposals each suppresses (itself first)."""
    groups: list[Group] = []
    for c in np.flatnonzero(tags):
        idx = np.flatnonzero(classes == c)
        if len(idx) == 0:
            continue
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        iou = box_iou(torch.as_tensor(boxes[idx], dtype=torch.float32),
                      torch.as_tensor(boxes[idx], dtype=torch.float32)).numpy()
        free = np.ones(len(idx), bool)
        best = scores[idx[0]]
        for j in range(len(idx)):
            if not free[j]:
                continue
            if groups and groups[-1].label == c and (
                    sum(g.label == c for g in groups) >= max_instances or scores[idx[j]] < min_relative_score * best):
                break
            members = np.flatnonzero(free & (iou[j] > nms_iou))
            members = np.concatenate([[j], members[members != j]])
            free[members] = False
            groups.append(Group(int(c), int(idx[j]), idx[members]))
    return groups


def paste_sum(maps: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) sum of the (n, h, w) ``maps`` each resized (bilinear) into its box (clipped to the image)."""
    out = np.zeros((height, width), np.float32)
    for m, box in zip(maps, boxes):
        x0, y0 = int(np.floor(max(box[0], 0))), int(np.floor(max(box[1], 0)))
        x1, y1 = int(np.ceil(min(box[2], width))), int(np.ceil(min(box[3], height)))
        if x1 <= x0 or y1 <= y0:
            continue
        out[y0:y1, x0:x1] += cv2.resize(np.asarray(m, np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    top = float(x.max()) if x.size else 0.0
    return x / top if top > 0 else np.zeros_like(x)


def instance_attention(maps: np.ndarray, boxes: np.ndarray, group: Group, height: int, width: int,
                       pasted: bool = False) -> np.ndarray:
    """Step 2: the (H, W) instance attention map A^k of ``group``, scaled to a maximum of 1."""
    members = group.members
    a = maps[members].sum(axis=0) if pasted else paste_sum(maps[members], boxes[members], height, width)
    return _unit(np.maximum(a, 0.0))


def heat_map(boxes: np.ndarray, scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """Step 3: per-pixel sum of the proposals' scores inside their boxes, scaled to a maximum of 1."""
    ones = np.ones((len(boxes), 1, 1), np.float32) * np.asarray(scores, np.float32)[:, None, None]
    return _unit(paste_sum(ones, boxes, height, width))


def background_map(instance_maps: np.ndarray) -> np.ndarray:
    """``A_0 = max(0, 1 - sum_k A^k)`` over the tagged classes' instance attention maps."""
    return np.maximum(0.0, 1.0 - instance_maps.sum(axis=0)) if len(instance_maps) else None


def box_mask(box: np.ndarray, height: int, width: int) -> np.ndarray:
    """The pixels of a box, at least one: a regressed box clamped to the image can have collapsed
    onto its border (x0 = x1 = width), whose plain slice would be empty."""
    x0, y0, x1, y1 = np.round(box).astype(int)
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    mask = np.zeros((height, width), bool)
    mask[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)] = True
    return mask


def box_of(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def calibrate(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
              maps: np.ndarray, tags: np.ndarray, nms_iou: float, max_instances: int,
              min_relative_score: float, crf: CRFConfig, pasted: bool = False,
              nms_boxes: np.ndarray | None = None, heat: bool = True) -> Candidates:
    """Steps 1-5 of the module docstring on one (H, W, 3) image. ``maps``: (P, h, w) attention maps
    to project into ``boxes`` (the RoIs they were pooled from), or (P, H, W) maps already in the
    image when ``pasted``. ``nms_boxes``: the boxes NMS compares and a candidate falls back to (a
    detector's regressed boxes; default ``boxes``). ``heat=False``: the confident map is the
    instance map alone (the refinement module's summed masks)."""
    h, w = image.shape[:2]
    nms_boxes = boxes if nms_boxes is None else nms_boxes
    groups = instance_groups(nms_boxes, scores, classes, tags, nms_iou, max_instances, min_relative_score)
    if not groups:
        return Candidates.empty(h, w)
    attention = np.stack([instance_attention(maps, boxes, g, h, w, pasted) for g in groups])
    if heat:
        class_heat = {c: heat_map(boxes[classes == c], scores[classes == c], h, w) for c in {g.label for g in groups}}
        confident = np.stack([attention[k] * class_heat[g.label] for k, g in enumerate(groups)])
    else:
        confident = attention
    labels = dense_crf(image, np.concatenate([background_map(attention)[None], confident]), crf)
    masks, out_boxes = [], []
    for k, g in enumerate(groups):
        mask = labels == k + 1
        if not mask.any():
            mask = box_mask(nms_boxes[g.top], h, w)
        masks.append(mask)
        out_boxes.append(box_of(mask))
    return Candidates(np.stack(masks), np.stack(out_boxes), np.array([g.label for g in groups], np.int64),
                      np.array([scores[g.top] for g in groups], np.float32))
