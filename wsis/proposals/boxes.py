"""Box proposals by selective search (Uijlings et al. 2013), OpenCV contrib's ximgproc implementation.

Objectness is rank-based: OpenCV returns the boxes ordered by the randomised hierarchy rank of the
paper (a region's level in its grouping hierarchy times a random number, lower first), and it
exposes no score, so the i-th of N boxes gets ``1 - i / N`` -- monotone in the only ordering the
algorithm defines, comparable across images only as a rank.

Images whose long side exceeds ``max_side`` are shrunk before the search (the cost grows faster
than the pixel count and the grouping is driven by coarse segments anyway); boxes are scaled back
to the original pixel-edge coordinates and clipped to the image.
"""
from __future__ import annotations

import cv2
import numpy as np

from wsis.proposals import Proposals, check_image

MODES = ("fast", "quality", "single")


def selective_search(
    image: np.ndarray,
    mode: str = "fast",
    max_proposals: int = 2000,
    max_side: int = 500,
    min_size: int = 4,
) -> Proposals:
    """Selective-search boxes of an RGB uint8 image, best-ranked first.

    ``min_size`` drops boxes narrower or shorter than that many pixels (in original coordinates).
    """
    if mode not in MODES:
        raise ValueError(f"selective_search mode {mode!r}: choose one of {MODES}")
    image = check_image(image)
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = image if scale == 1.0 else cv2.resize(
        image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    {"fast": search.switchToSelectiveSearchFast,
     "quality": search.switchToSelectiveSearchQuality,
     "single": search.switchToSingleStrategy}[mode]()
    rects = np.asarray(search.process(), dtype=np.float64).reshape(-1, 4)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    sy, sx = h / small.shape[0], w / small.shape[1]
    boxes *= np.array([sx, sy, sx, sy])
    boxes = np.clip(boxes, 0, [w, h, w, h])
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes = boxes[keep][:max_proposals]
    n = len(boxes)
    objectness = 1.0 - np.arange(n, dtype=np.float32) / max(n, 1)
    return Proposals((h, w), boxes.astype(np.float32), None, objectness)
