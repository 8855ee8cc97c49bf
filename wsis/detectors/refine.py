"""WISE's optional test-time refinement (Fig. 3): each predicted mask is replaced by the proposal of
highest Jaccard similarity (mask IoU) with it, from the same proposal method as in training.

A prediction that overlaps no proposal at all (IoU 0 with every one) keeps its own mask: swapping it
for an arbitrary disjoint proposal would move the instance. Labels and scores are kept; the box
becomes the new mask's box.
"""
from __future__ import annotations

import numpy as np

from wsis import masks as mask_ops
from wsis.proposals import Proposals
from wsis.structures import Instances


def best_proposals(predicted: list, proposals: list) -> tuple[np.ndarray, np.ndarray]:
    """For each predicted RLE, the index of the proposal RLE of highest IoU (first on ties) and that IoU."""
    if not predicted or not proposals:
        return np.zeros(len(predicted), np.int64), np.zeros(len(predicted))
    iou = mask_ops.iou(predicted, proposals)  # (P, N)
    best = iou.argmax(axis=1)
    return best, iou[np.arange(len(predicted)), best]


def refine_with_proposals(instances: Instances, proposals: Proposals) -> Instances:
    """``instances`` with every mask swapped for its highest-IoU proposal mask (see module doc)."""
    if len(instances) == 0 or not proposals.has_masks or len(proposals) == 0:
        return instances
    if tuple(proposals.image_size) != tuple(instances.image_size):
        raise ValueError(f"proposals of size {proposals.image_size} for instances of size {instances.image_size}")
    rles = instances.rles()
    best, iou = best_proposals(rles, proposals.masks)
    masks = [proposals.masks[j] if iou[i] > 0 else rles[i] for i, j in enumerate(best)]
    return Instances(instances.image_size, mask_ops.to_bbox(masks), instances.labels, instances.scores, masks)
