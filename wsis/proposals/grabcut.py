"""Box -> mask proposals with GrabCut (Rother et al. 2004), OpenCV's implementation.

Each box runs GrabCut on a crop around it (the box plus a ``margin`` share of its size on every
side, at least 8 pixels) shrunk so its long side is at most ``max_side``: the colour models only
need the box's surroundings, and the cost of GrabCut grows with the pixels it sees. Outside the box
is certain background, inside probable foreground. A box that leaves no background in the crop
(e.g. the whole image) gets a one-pixel probable-background frame so both colour models have
samples. The result is enlarged back, cut to the box and written as an RLE of the full image; when
GrabCut keeps nothing, the box itself is the mask.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from wsis import masks as mask_ops
from wsis.proposals import Proposals, check_image


def grabcut_masks(
    image: np.ndarray,
    boxes: np.ndarray | Sequence[Sequence[float]],
    iterations: int = 5,
    scores: np.ndarray | None = None,
    margin: float = 0.25,
    max_side: int = 160,
) -> Proposals:
    """One GrabCut mask per xyxy box; objectness = ``scores`` (default 1), boxes = the masks' tight boxes."""
    image = check_image(image)
    h, w = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    masks = np.zeros((len(boxes), h, w), dtype=bool) if len(boxes) <= 64 else None
    rles = []
    for i, box in enumerate(boxes):
        mask = grabcut_one(image, box, iterations, margin, max_side)
        if masks is not None:
            masks[i] = mask
        else:
            rles.append(mask_ops.encode(mask))
    if masks is not None:
        rles = mask_ops.encode_many(masks)
    objectness = np.ones(len(boxes), np.float32) if scores is None else np.asarray(scores, np.float32)
    return Proposals((h, w), mask_ops.to_bbox(rles) if rles else np.zeros((0, 4)), rles, objectness)


def grabcut_one(image: np.ndarray, box: np.ndarray, iterations: int = 5, margin: float = 0.25,
                max_side: int = 160) -> np.ndarray:
    """Full-image (H, W) bool mask of the object GrabCut finds in one xyxy box."""
    h, w = image.shape[:2]
    x0, y0 = int(np.floor(max(box[0], 0))), int(np.floor(max(box[1], 0)))
    x1, y1 = int(np.ceil(min(box[2], w))), int(np.ceil(min(box[3], h)))
    out = np.zeros((h, w), dtype=bool)
    if x1 - x0 < 2 or y1 - y0 < 2:
        out[y0:max(y1, y0), x0:max(x1, x0)] = True
        return out
    pad_x = max(8, int(round(margin * (x1 - x0))))
    pad_y = max(8, int(round(margin * (y1 - y0))))
    cx0, cy0 = max(0, x0 - pad_x), max(0, y0 - pad_y)
    cx1, cy1 = min(w, x1 + pad_x), min(h, y1 + pad_y)
    crop = image[cy0:cy1, cx0:cx1]
    scale = min(1.0, max_side / max(crop.shape[:2]))
    size = (max(2, round(crop.shape[1] * scale)), max(2, round(crop.shape[0] * scale)))
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else crop
    sh, sw = small.shape[:2]
    fy, fx = sh / crop.shape[0], sw / crop.shape[1]
    inner = (int(np.floor((x0 - cx0) * fx)), int(np.floor((y0 - cy0) * fy)),
             int(np.ceil((x1 - cx0) * fx)), int(np.ceil((y1 - cy0) * fy)))
    trimap = np.full((sh, sw), cv2.GC_BGD, np.uint8)
    trimap[inner[1]:inner[3], inner[0]:inner[2]] = cv2.GC_PR_FGD
    if not (trimap == cv2.GC_BGD).any():
        trimap[[0, -1], :] = cv2.GC_PR_BGD
        trimap[:, [0, -1]] = cv2.GC_PR_BGD
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.grabCut(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), trimap, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    fg = ((trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)).astype(np.uint8)
    fg = cv2.resize(fg, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
    out[cy0:cy1, cx0:cx1] = fg
    clip = np.zeros((h, w), dtype=bool)
    clip[y0:y1, x0:x1] = True
    out &= clip
    if not out.any():
        out = clip
    return out
