"""The attention module (``papers/003``, 3.3, Eq. 1): class-specific multi-scale features.

Every detector level f_k keeps its feature vectors inside the class's boxes and is zero elsewhere;
the output has the input's spatial size (unlike RoI pooling, all instances keep their layout).
Boxes are normalised by the image size and mapped to each level's W_k x H_k grid.

Which grid cells are "inside": cell x spans [x, x+1) in grid units and is kept when it overlaps
[W_k x_min, W_k x_max] (the same for y). Eq. 1 read literally (integer x in the interval) keeps no
cell at all for a box narrower than one cell of a coarse level (a 20-px object on SSD's 3x3 level),
which would hide small objects from every coarse level.

The operation is a multiplication by a 0/1 mask, so its backward pass is the same mask applied to
the incoming gradient ("the backward process of the attention operation has similar form"): the
segmentation loss can reach the detector (joint training, 3.5).
"""
from __future__ import annotations

from typing import Sequence

import torch


def cell_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W) float 0/1 mask of the cells of an H x W grid overlapping any of ``boxes``
    ((B, 4) normalised xyxy in [0, 1]); all zeros when there is no box."""
    device = boxes.device
    if len(boxes) == 0:
        return torch.zeros(height, width, device=device)
    xs = torch.arange(width, device=device, dtype=torch.float32)
    ys = torch.arange(height, device=device, dtype=torch.float32)
    x1, y1, x2, y2 = (boxes[:, i:i + 1].float() for i in range(4))
    cols = (xs < x2 * width) & (xs + 1 > x1 * width)      # (B, W)
    rows = (ys < y2 * height) & (ys + 1 > y1 * height)    # (B, H)
    return (rows[:, :, None] & cols[:, None, :]).any(dim=0).float()


def attend(features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Eq. 1 for a batch: ``features[k]`` is (N, C_k, H_k, W_k), ``boxes[i]`` the (B_i, 4) normalised
    class-specific boxes of sample i; returns F^l = {f_k^l}, each level the size of its input."""
    out = []
    for f in features:
        h, w = f.shape[-2:]
        masks = torch.stack([cell_mask(b.to(f.device), h, w) for b in boxes])  # (N, H, W)
        out.append(f * masks[:, None].to(f.dtype))
    return out
