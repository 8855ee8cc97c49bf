"""Class-map fill: more instances per tagged class than the class response map has peaks.

Not in the papers (issue 11, ``benchmarks/results/diagnose.md``). PRM retrieves one mask per peak, and
at 448 px the stride-32 class map is 14 x 14 cells: a crowd or a small object gets no peak of its own,
so on coco-val50 only a quarter of the instances of the tagged classes have a peak inside, and no
retrieval, however good, can reach them (the *peak bound*). The fill ranks the proposals of each
class that kept a peak by how well they outline a blob of its class map::

    quality(M, c) = mean(A_c in M) - contrast * mean(A_c on contour(M))

with ``A_c`` the class map clipped at 0 and divided by its maximum (so quality <= 1) and the contour a
ring of ``contour_width`` on a grid of about 112 pixels (:func:`sampling_step`), and adds the
best ones, greedily, that overlap no kept instance of the class by ``nms_threshold`` or more. A part
inside a blob has a bright contour and a proposal much larger than the blob a dim inside, so both
rank below a proposal that follows the blob's edge.

Fill instances are scored ``score_offset + quality``: with the default offset (-2) every one ranks
below every peak instance whose retrieval score is above -1 (Eq. 10 scores of kept instances are
positive in practice), so the fill only adds detections at the tail of each class's ranking -- the
precision at the recall the peaks reach is unchanged, and the average-best-overlap can only rise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsis.errors import InputError
from wsis.proposals.retrieval import chunked_products, contour_masks


@dataclass
class FillConfig:
    per_class: int = 0  # fill instances per class that kept a peak; 0: off (the papers)
    nms_threshold: float = 0.5  # a fill instance overlaps no kept instance of its class by this mask IoU
    contrast: float = 1.0  # weight of the contour term of the quality (module docstring)
    contour_width: int = 3  # of the contour, on the fill's ~112-pixel sampling grid (sampling_step)
    score_offset: float = -2.0  # fill score = score_offset + quality (quality <= 1)
    candidates: int = 300  # best-quality proposals examined per class (bounds the greedy loop)

    def check(self) -> None:
        if self.per_class < 0:
            raise InputError("config", f"test.fill.per_class must be >= 0, not {self.per_class}")
        if not 0.0 < self.nms_threshold <= 1.0:
            raise InputError("config", f"test.fill.nms_threshold must be in (0, 1], not {self.nms_threshold}")
        if self.contour_width < 1:
            raise InputError("config", f"test.fill.contour_width must be >= 1, not {self.contour_width}")
        if self.candidates < 1:
            raise InputError("config", f"test.fill.candidates must be >= 1, not {self.candidates}")


@dataclass
class Filled:
    """Fill instances of one image: the chosen proposals, their class indices and scores."""

    proposal_index: np.ndarray  # (N,) int64
    classes: np.ndarray  # (N,) int64, indices into the class maps
    scores: np.ndarray  # (N,) float64


def normalised_maps(class_maps: np.ndarray) -> np.ndarray:
    """(K, H, W) class responses -> clipped at 0 and divided by each map's maximum (all-zero stays 0)."""
    pos = np.maximum(np.asarray(class_maps, dtype=np.float32), 0.0)
    top = pos.reshape(len(pos), -1).max(axis=1) if len(pos) else np.zeros(0, np.float32)
    return pos / np.where(top > 0, top, 1.0)[:, None, None]


def sampling_step(height: int, width: int, side: int = 112) -> int:
    """Every how many pixels the fill samples the maps and masks: about ``side`` samples along the
    longer side. The quality is a mean over regions and rings a few percent of the image wide, and
    the overlap test a threshold at 0.5: a 112-pixel grid decides them as the full one does, at a
    sixteenth of the cost at the scoring resolution of 448."""
    return max(1, max(height, width) // side)


def fill_quality(class_maps: np.ndarray, masks: np.ndarray, contrast: float, size_limit: tuple[float, float],
                 step: int = 1, contour_width: int = 3) -> np.ndarray:
    """(K, P) quality of every proposal (P, H, W) for every class map (K, H, W) on the grid of every
    ``step``-th pixel, where the contour is the masks' morphological gradient of ``contour_width``;
    -inf outside the size limits (fractions of the image area) and for masks empty on the grid."""
    maps = normalised_maps(class_maps)[:, ::step, ::step]
    masks = np.ascontiguousarray(masks[:, ::step, ::step])
    contours = contour_masks(masks, contour_width)
    h, w = masks.shape[1:]
    area = masks.reshape(len(masks), -1).sum(axis=1).astype(np.float64)
    ring = contours.reshape(len(contours), -1).sum(axis=1).astype(np.float64)
    both = chunked_products(maps, np.concatenate([masks, contours]))
    inside = both[:, : len(masks)] / np.maximum(area, 1.0)
    on_contour = both[:, len(masks):] / np.maximum(ring, 1.0)
    quality = inside - contrast * on_contour
    bad = (area == 0) | (area < size_limit[0] * h * w) | (area >= size_limit[1] * h * w)
    quality[:, bad] = -np.inf
    return quality


def fill_instances(classes: np.ndarray, class_maps: np.ndarray, masks: np.ndarray, kept_proposals: np.ndarray, kept_classes: np.ndarray, cfg: FillConfig,
                   size_limit: tuple[float, float]) -> Filled:
    """Fill instances for each class index in ``classes`` (see the module docstring). ``class_maps``
    (C, H, W) is indexed by class; ``masks`` (P, H, W) are the proposals at the same resolution; ``kept_proposals`` / ``kept_classes`` are the instances retrieval already kept."""
    classes = np.unique(np.asarray(classes, dtype=np.int64))
    if cfg.per_class == 0 or len(classes) == 0 or len(masks) == 0:
        return Filled(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    step = sampling_step(*masks.shape[1:])
    quality = fill_quality(class_maps[classes], masks, cfg.contrast, size_limit, step, cfg.contour_width)
    coarse = masks[:, ::step, ::step].reshape(len(masks), -1)
    areas = coarse.sum(axis=1).astype(np.float64)
    kept_proposals = np.asarray(kept_proposals, dtype=np.int64)
    kept_classes = np.asarray(kept_classes, dtype=np.int64)
    picks: list[int] = []
    labels: list[int] = []
    scores: list[float] = []
    for k, c in enumerate(classes):
        taken = list(kept_proposals[kept_classes == c])
        order = np.argsort(-quality[k], kind="stable")[: cfg.candidates]
        added = 0
        for p in order:
            if added == cfg.per_class or not np.isfinite(quality[k, p]):
                break
            if taken:
                inter = (coarse[taken] & coarse[p]).sum(axis=1)
                iou = inter / np.maximum(areas[taken] + areas[p] - inter, 1.0)
                if iou.max() >= cfg.nms_threshold:
                    continue
            taken.append(int(p))
            picks.append(int(p))
            labels.append(int(c))
            scores.append(cfg.score_offset + float(quality[k, p]))
            added += 1
    return Filled(np.asarray(picks, np.int64), np.asarray(labels, np.int64), np.asarray(scores, np.float64))


def with_fill(index: np.ndarray, classes: np.ndarray, scores: np.ndarray, peak_classes: np.ndarray,
              class_maps: np.ndarray, masks: np.ndarray, cfg: FillConfig,
              size_limit: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Retrieval's kept instances (proposal indices, class indices, scores) followed by the fill
    instances of the peaks' classes; unchanged when the fill is off."""
    if not cfg.per_class:
        return index, classes, scores
    extra = fill_instances(peak_classes, class_maps, masks, index, classes, cfg, size_limit)
    return (np.concatenate([index, extra.proposal_index]), np.concatenate([classes, extra.classes]),
            np.concatenate([scores, extra.scores]))
