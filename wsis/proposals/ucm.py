"""Boundary-driven mask proposals: learned boundaries -> watershed -> ultrametric contour map -> MCG-style grouping.

The recipe of MCG (Pont-Tuset et al., TPAMI 2017) and COB (Maninis et al., TPAMI 2018), the
proposals the papers of this field used, on boundaries that install with the project:

1. **Boundaries.** HED (:mod:`wsis.cues.hed`, BSDS500 weights) by default, or a Sobel gradient of
   the smoothed Lab image (``boundary="sobel"``, no learning: the baseline).
2. **Fine regions.** Watershed of the (slightly smoothed) boundary map from its local minima
   (scikit-image), so every region is a basin and every arc between two regions runs along a
   boundary ridge.
3. **Hierarchy = ultrametric contour map** (Arbelaez et al., TPAMI 2011, Sec. 4.2): repeatedly merge
   the two adjacent regions whose common boundary has the lowest mean strength; the strength of the
   merged region's arcs to its neighbours is the length-weighted mean of the arcs it inherits. The
   merge heights are the UCM: thresholding it at any level gives a segmentation, and every node of
   the merge tree is a region of some level. Difference from gPb-OWT-UCM / COB, written down:
   their *oriented* watershed reweights each arc by the boundary response at the arc's orientation;
   HED has no orientation channels, so an arc's strength is the plain mean of the map along it.
4. **Proposals** (MCG's combinatorial grouping, single scale): every node of the hierarchy, plus, at
   several levels of the hierarchy (the partitions with ``levels`` regions), the unions of every pair
   of adjacent regions and of every chain of three (``a-b-c`` with ``a`` and ``c`` adjacent to ``b``).
   MCG's grouping and ranking work the same way over its multi-scale hierarchies, which are here as
   the ``scales`` / ``scale_combine`` settings (:func:`multiscale_boundary_map`, :func:`ucm_proposals`):
   HED on the image at e.g. 0.5x / 1x / 2x, the maps aligned to the original grid and either averaged
   into one hierarchy (``mean``) or given one hierarchy each, pooled by relative rank (``pool``).
5. **Objectness** (MCG ranks with a random forest on region features): by default a fixed product,
   :func:`objectness` -- mean boundary strength along the region's outline (objects end at strong
   boundaries) x compactness x share of the outline that is not the image frame x a mild size
   term. ``ranking="learned"`` uses a logistic regression of the candidate's best IoU with any object
   on :data:`FEATURES`, fitted on training images (``benchmarks/fit_ucm_ranker.py``); on the tuning
   images it ranked *worse* (ABO 0.524 / recall@0.5 0.533 at 1,000 against 0.530 / 0.546 for the
   product, both with ``dedup_iou=0.95``): regressing the IoU of every candidate rewards many good
   copies of the same big object, not coverage of all objects. Near-duplicates (mask IoU >
   ``dedup_iou``) are removed best-first and the best ``max_proposals`` kept.

Settings were chosen on training images only (coco128 images 0-39, class-agnostic ABO / recall@0.5
of the best of 1,000), never on coco-val50 (``benchmarks/results/proposals_train.md``; coco-val50: ``proposals.md``):
``dedup_iou`` 0.75 over 0.95 (ABO 0.530 -> 0.542, recall 0.546 -> 0.568: the budget goes to other
objects instead of near-copies), Gaussian ``smooth`` 1.0 over 0.5 (0.522) and 1.5 (0.530), the
five ``levels`` over nine (3-64 regions: 0.543, 70 % slower).

The segmentation runs on a copy whose long side is at most ``max_side`` pixels; the label image is
enlarged with nearest-neighbour sampling, so masks are RLEs of the original size, and unions are
pycocotools' C merges of the nodes' RLEs.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from skimage.segmentation import watershed

from wsis import masks as mask_ops
from wsis.proposals import Proposals, check_image
from wsis.proposals.masks import (
    merge_adjacency,
    _adjacency,
    _xyxy,
    colour_gradient,
    deduplicate,
    region_masks,
    superpixel_rles,
)

DEFAULT_LEVELS = (4, 8, 16, 32, 64)


# One boundary detector per process and setting: loading the HED weights costs ~0.5 s.
_DETECTORS: dict[tuple, object] = {}


def boundary_map(image: np.ndarray, boundary: str = "hed", hed_max_side: int | None = None,
                 cache_dir: str | Path | None = None) -> np.ndarray:
    """(H, W) float32 boundary strength in [0, 1] of an RGB uint8 image: ``hed`` or ``sobel``."""
    if boundary == "sobel":
        g = colour_gradient(image)
        return g / max(float(np.percentile(g, 99.5)), 1e-6)
    if boundary != "hed":
        raise ValueError(f"boundary {boundary!r}: choose 'hed' or 'sobel'")
    from wsis.cues.hed import HEDBoundaries

    key = (hed_max_side, None if cache_dir is None else str(cache_dir))
    if key not in _DETECTORS:
        _DETECTORS[key] = HEDBoundaries(max_side=hed_max_side, cache_dir=cache_dir)
    return _DETECTORS[key](image)


def multiscale_boundary_map(image: np.ndarray, scales: tuple[float, ...] | list[float] = (1.0,),
                            boundary: str = "hed", hed_max_side: int | None = None,
                            cache_dir: str | Path | None = None) -> list[np.ndarray]:
    """Boundary maps of ``image`` resized by each of ``scales``, each aligned back to (H, W).

    MCG's multi-scale step: the detector sees the image at 0.5x / 1x / 2x -- at 2x a small object
    spans four times the pixels, so its outline leaves a response where at 1x it falls below the
    receptive field's resolution. Each map is resized back to the original grid (bilinear), which
    aligns them pixel for pixel. HED maps are cached by the *resized* image's content, so every
    scale has its own entry.
    """
    h, w = image.shape[:2]
    maps = []
    for s in scales:
        if s <= 0:
            raise ValueError(f"scale {s}: scales must be positive")
        size = (max(1, round(w * s)), max(1, round(h * s)))
        resized = image if size == (w, h) else cv2.resize(
            image, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
        edges = boundary_map(resized, boundary, hed_max_side, cache_dir).astype(np.float32)
        if edges.shape != (h, w):
            edges = cv2.resize(edges, (w, h), interpolation=cv2.INTER_AREA if s > 1 else cv2.INTER_LINEAR)
        maps.append(edges)
    return maps


def watershed_regions(edges: np.ndarray, smooth: float = 1.0) -> np.ndarray:
    """Watershed basins of the boundary map from its local minima -> int32 labels 0..n-1."""
    e = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), smooth) if smooth > 0 else edges.astype(np.float32)
    # Quantised so that flat interiors form one plateau (one marker) instead of many float minima.
    levels = np.round(e * 255).astype(np.uint8)
    labels = watershed(levels).astype(np.int32)
    _, dense = np.unique(labels, return_inverse=True)  # a flat map has no minimum: one region
    return dense.reshape(labels.shape).astype(np.int32)


@dataclass
class UCMHierarchy:
    """Merge tree of the fine regions: node n+i is the union of ``merges[i]``, created at ``height[n+i]``.

    ``area``/``contour_sum``/``contour_len``/``border_len`` per node (pixel counts and pixel-edge
    lengths; contour = boundary with other regions, border = with the image frame). ``groups`` are
    the extra MCG candidates: tuples of node ids whose union is a proposal, with their summed stats.
    """

    n_leaves: int
    merges: np.ndarray
    height: np.ndarray
    area: np.ndarray
    contour_sum: np.ndarray
    contour_len: np.ndarray
    border_len: np.ndarray
    interior_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))
    groups: list[tuple[int, ...]] = field(default_factory=list)
    group_stats: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))

    def death(self) -> np.ndarray:
        """Height at which each node is absorbed by its parent (the root: the top height)."""
        death = np.full(len(self.height), self.height.max(initial=0.0))
        parents = np.arange(self.n_leaves, self.n_leaves + len(self.merges))
        death[self.merges[:, 0]] = self.height[parents]
        death[self.merges[:, 1]] = self.height[parents]
        return death


def build_ucm(labels: np.ndarray, edges: np.ndarray, levels: tuple[int, ...] = DEFAULT_LEVELS,
              pairs: bool = True, triplets: bool = True) -> UCMHierarchy:
    """Greedy weakest-boundary merging of the regions of ``labels`` (values 0..n-1) on ``edges``."""
    n = int(labels.max()) + 1
    total = 2 * n - 1
    area = np.zeros(total)
    area[:n] = np.bincount(labels.ravel(), minlength=n)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border_len = np.zeros(total)
    border_len[:n] = np.bincount(border, minlength=n)
    interior_sum = np.zeros(total)
    interior_sum[:n] = np.bincount(labels.ravel(), weights=edges.ravel(), minlength=n)
    adj, edge_sum, edge_len = _adjacency(labels, edges, n)
    contour_sum = np.zeros(total)
    contour_len = np.zeros(total)
    contour_sum[:n] = np.bincount(adj.ravel(), weights=np.repeat(edge_sum, 2), minlength=n)
    contour_len[:n] = np.bincount(adj.ravel(), weights=np.repeat(edge_len, 2), minlength=n)
    height = np.zeros(total)
    neighbours: list[dict[int, tuple[float, float]]] = [dict() for _ in range(total)]
    for (a, b), s, ln in zip(adj.tolist(), edge_sum.tolist(), edge_len.tolist()):
        neighbours[a][b] = (s, ln)
        neighbours[b][a] = (s, ln)
    heap = [(s / ln, a, b) for (a, b), s, ln in zip(adj.tolist(), edge_sum.tolist(), edge_len.tolist())]
    heapq.heapify(heap)

    wanted = sorted({k for k in levels if 2 <= k}, reverse=True)
    groups: list[tuple[int, ...]] = []
    group_stats: list[tuple[float, float, float, float, float]] = []
    seen: set[frozenset] = set()

    def snapshot(alive_nodes: list[int]) -> None:
        alive_set = set(alive_nodes)

        def add(nodes: tuple[int, ...], shared: list[tuple[float, float]]) -> None:
            key = frozenset(nodes)
            if key in seen:
                return
            seen.add(key)
            groups.append(nodes)
            s_shared = sum(s for s, _ in shared)
            l_shared = sum(ln for _, ln in shared)
            group_stats.append((
                sum(area[i] for i in nodes),
                sum(contour_sum[i] for i in nodes) - 2 * s_shared,
                sum(contour_len[i] for i in nodes) - 2 * l_shared,
                sum(border_len[i] for i in nodes),
                sum(interior_sum[i] for i in nodes),
            ))

        for b in alive_nodes:
            nb = [m for m in neighbours[b] if m in alive_set]
            if pairs:
                for m in nb:
                    if m > b:
                        add((b, m), [neighbours[b][m]])
            if triplets:
                for i, a in enumerate(nb):
                    for c in nb[i + 1:]:
                        shared = [neighbours[b][a], neighbours[b][c]]
                        if c in neighbours[a]:
                            shared.append(neighbours[a][c])
                        add((a, b, c), shared)

    alive = np.zeros(total, bool)
    alive[:n] = True
    count = n
    while wanted and wanted[0] >= count:  # fewer fine regions than a level: that level is the start
        if wanted.pop(0) == count:
            snapshot(list(range(n)))
    merges = []
    new = n
    while heap:
        strength, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue
        c = new
        new += 1
        alive[[a, b]] = False
        alive[c] = True
        merges.append((a, b))
        height[c] = strength
        area[c] = area[a] + area[b]
        border_len[c] = border_len[a] + border_len[b]
        interior_sum[c] = interior_sum[a] + interior_sum[b]
        shared_sum, shared_len = neighbours[a][b]
        contour_sum[c] = contour_sum[a] + contour_sum[b] - 2 * shared_sum
        contour_len[c] = contour_len[a] + contour_len[b] - 2 * shared_len
        for m, (s, ln) in merge_adjacency(neighbours, a, b, c).items():
            heapq.heappush(heap, (s / ln, c, m))
        count -= 1
        if wanted and count == wanted[0]:
            wanted.pop(0)
            snapshot(np.flatnonzero(alive).tolist())
    used = n + len(merges)
    return UCMHierarchy(
        n, np.asarray(merges, np.int64).reshape(-1, 2), height[:used], area[:used], contour_sum[:used],
        contour_len[:used], border_len[:used], interior_sum[:used], groups,
        np.asarray(group_stats, np.float64).reshape(-1, 5),
    )


def objectness(area: np.ndarray, contour_sum: np.ndarray, contour_len: np.ndarray, border_len: np.ndarray,
               image_area: float, size_power: float = 0.25) -> np.ndarray:
    """Mean outline boundary strength x compactness x not-the-frame x size, in [0, 1].

    ``edge``: mean boundary probability along the part of the outline inside the image (HED is a
    probability; Sobel maps are scaled to [0, 1] first). ``compact = (4 pi area / perimeter^2)^0.5``
    (perimeter in pixel edges, so a square scores ~0.89). ``inner = (1 - border / perimeter)^0.5``:
    regions bounded mostly by the frame are background more often than objects. ``size =
    (area / image area)^0.25`` keeps tiny, trivially compact basins from crowding out the rest.
    """
    eps = 1e-6
    perimeter = contour_len + border_len
    edge = np.clip(contour_sum / np.maximum(contour_len, eps), 0.0, 1.0)
    edge = np.where(contour_len > 0, edge, 0.0)  # the whole image
    compact = np.sqrt(np.clip(4 * np.pi * area / np.maximum(perimeter, eps) ** 2, 0.0, 1.0))
    inner = np.sqrt(np.clip(1.0 - border_len / np.maximum(perimeter, eps), 0.0, 1.0))
    size = (area / image_area) ** size_power
    return (edge * compact * inner * size).astype(np.float32)


# Candidate features for the learned ranking (MCG's ranker learns from such region features).
FEATURES = ("log_area", "log_area^2", "edge", "interior", "compact", "inner", "lifetime", "pair", "triplet")
# Logistic regression of a candidate's best IoU with any ground-truth object on FEATURES, fitted on
# training images only (coco128 images 0-63 + coco-train83 images 0-31, HED, default settings) by
# benchmarks/fit_ucm_ranker.py -- see benchmarks/results/ucm_ranker.json.
RANKER_WEIGHTS: tuple[float, ...] = (0.00485365, -0.0461221, 2.22602, 0.760613, -0.804026, 6.32017, -0.565993, 0.327202, 0.267001)
RANKER_BIAS = -9.1491


def candidate_features(tree: UCMHierarchy, image_area: float) -> np.ndarray:
    """(nodes + groups, len(FEATURES)) features: size, boundary strength, shape and stability."""
    eps = 1e-6
    n_nodes = len(tree.area)
    stats = np.concatenate([
        np.stack([tree.area, tree.contour_sum, tree.contour_len, tree.border_len, tree.interior_sum], 1),
        tree.group_stats], axis=0)
    area, c_sum, c_len, border, interior = stats.T
    perimeter = c_len + border
    log_area = np.log(np.maximum(area, 1.0) / image_area)
    edge = np.where(c_len > 0, c_sum / np.maximum(c_len, eps), 0.0)
    compact = np.sqrt(np.clip(4 * np.pi * area / np.maximum(perimeter, eps) ** 2, 0.0, 1.0))
    inner = np.sqrt(np.clip(1.0 - border / np.maximum(perimeter, eps), 0.0, 1.0))
    lifetime = np.zeros(len(stats))
    lifetime[:n_nodes] = tree.death() - tree.height
    parts = np.concatenate([np.ones(n_nodes), [len(g) for g in tree.groups]])
    return np.stack([log_area, log_area ** 2, edge, interior / np.maximum(area, 1.0), compact, inner, lifetime,
                     parts == 2, parts == 3], 1).astype(np.float64)


def learned_objectness(features: np.ndarray, weights=None, bias: float | None = None) -> np.ndarray:
    """The fitted ranker's predicted IoU in (0, 1)."""
    weights = np.asarray(RANKER_WEIGHTS if weights is None else weights, np.float64)
    bias = RANKER_BIAS if bias is None else bias
    return (1.0 / (1.0 + np.exp(-(features @ weights + bias)))).astype(np.float32)


@dataclass
class Candidates:
    """Every hierarchy node and MCG group of one image before ranking: masks (RLE, original size),
    per-candidate features, and the fixed-product objectness."""

    image_size: tuple[int, int]
    rles: list[dict]
    features: np.ndarray
    product_score: np.ndarray
    area_fraction: np.ndarray


def ucm_candidates(image: np.ndarray, boundary: str = "hed", max_side: int = 640, hed_max_side: int | None = None,
                   smooth: float = 1.0, levels: tuple[int, ...] | list[int] = DEFAULT_LEVELS, pairs: bool = True,
                   triplets: bool = True, size_power: float = 0.25, boundary_cache: str | None = None,
                   edges: np.ndarray | None = None) -> Candidates:
    """Boundaries -> watershed -> UCM -> nodes and groups, unranked (see :func:`ucm_proposals`)."""
    image = check_image(image)
    h, w = image.shape[:2]
    if edges is None:
        edges = boundary_map(image, boundary, hed_max_side, boundary_cache)
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = edges if scale == 1.0 else cv2.resize(edges.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    labels = watershed_regions(small, smooth)
    tree = build_ucm(labels, small.astype(np.float64), tuple(levels), pairs, triplets)
    full_labels = labels if scale == 1.0 else cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    nodes = region_masks(superpixel_rles(full_labels), tree.merges)
    group_masks = [mask_utils.merge([nodes[i] for i in g], intersect=False) for g in tree.groups]
    small_area = float(labels.size)
    stats = np.concatenate([np.stack([tree.area, tree.contour_sum, tree.contour_len, tree.border_len], 1),
                            tree.group_stats[:, :4]], axis=0)
    score = objectness(stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3], small_area, size_power)
    return Candidates((h, w), nodes + group_masks, candidate_features(tree, small_area), score,
                      stats[:, 0] / small_area)


SCALE_COMBINES = ("mean", "pool")


def ucm_proposals(
    image: np.ndarray,
    boundary: str = "hed",
    max_side: int = 640,
    hed_max_side: int | None = None,
    smooth: float = 1.0,
    levels: tuple[int, ...] | list[int] = DEFAULT_LEVELS,
    pairs: bool = True,
    triplets: bool = True,
    min_area: float = 0.0002,
    max_area: float = 0.95,
    dedup_iou: float = 0.75,
    max_proposals: int = 1000,
    ranking: str = "product",
    size_power: float = 0.25,
    boundary_cache: str | None = None,
    edges: np.ndarray | None = None,
    scales: tuple[float, ...] | list[float] = (1.0,),
    scale_combine: str = "mean",
) -> Proposals:
    """Boundary-driven hierarchical mask proposals of an RGB uint8 image, highest objectness first.

    ``ranking``: ``learned`` (the fitted ranker, :data:`RANKER_WEIGHTS`; falls back to ``product``
    while none is fitted) or ``product`` (:func:`objectness`). ``edges``: a precomputed (H, W)
    boundary map in [0, 1] (then ``boundary`` is not run); ``boundary_cache``: folder where HED maps
    are cached by image content. ``min_area``/``max_area`` are fractions of the image area.

    ``scales`` (MCG's multi-scale hierarchies): the boundary detector runs on the image resized by
    each factor (:func:`multiscale_boundary_map`) and the aligned maps are combined by
    ``scale_combine``: ``mean`` averages them into one map and builds one hierarchy on it (MCG
    combines its aligned per-scale UCMs into a single one; the mean of the aligned boundary maps is
    that step before the UCM rather than after), ``pool`` builds one hierarchy per scale, ranks each
    by its own objectness and interleaves the ranked lists by relative rank (as
    :mod:`wsis.proposals.pooled` does) before the shared near-duplicate removal. On the 40 tuning
    images with scales 0.5 / 1 / 2 (``benchmarks/results/proposals_train.md``): ``pool`` ABO 0.555 /
    recall@0.5 0.615 at ~3x the UCM time, ``mean`` 0.543 / 0.580, single scale 0.542 / 0.568; the
    gain is on objects >= 32 px, not on the small ones. The default stays single-scale (1x HED).
    """
    if ranking not in ("learned", "product"):
        raise ValueError(f"ranking {ranking!r}: choose 'learned' or 'product'")
    if scale_combine not in SCALE_COMBINES:
        raise ValueError(f"scale_combine {scale_combine!r}: choose one of {SCALE_COMBINES}")
    image = check_image(image)
    h, w = image.shape[:2]
    if edges is not None:
        maps = [edges]
    elif tuple(scales) == (1.0,):
        maps = [boundary_map(image, boundary, hed_max_side, boundary_cache)]
    else:
        maps = multiscale_boundary_map(image, scales, boundary, hed_max_side, boundary_cache)
    if scale_combine == "mean" and len(maps) > 1:
        maps = [np.mean(np.stack(maps), axis=0)]
    ranked_rles: list[dict] = []
    ranked_score: list[np.ndarray] = []
    priority: list[np.ndarray] = []
    for edge_map in maps:
        cand = ucm_candidates(image, boundary, max_side, hed_max_side, smooth, levels, pairs, triplets, size_power,
                              boundary_cache, edge_map)
        score = (learned_objectness(cand.features) if ranking == "learned" and len(RANKER_WEIGHTS)
                 else cand.product_score)
        keep = np.flatnonzero((cand.area_fraction >= min_area) & (cand.area_fraction <= max_area))
        order = keep[np.argsort(-score[keep], kind="stable")]
        ranked_rles.extend(cand.rles[i] for i in order)
        ranked_score.append(score[order])
        # One hierarchy: its own order. Several: relative rank, the scale their scores share.
        priority.append(-np.arange(len(order), dtype=np.float64) / max(len(order), 1))
    if not ranked_rles:
        return Proposals((h, w))
    score = np.concatenate(ranked_score)
    order = np.argsort(-np.concatenate(priority), kind="stable")
    rles = [ranked_rles[i] for i in order]
    score = score[order] if len(maps) == 1 else 1.0 + np.concatenate(priority)[order]
    boxes = _xyxy(mask_utils.toBbox(rles))
    areas = mask_ops.area(rles).astype(np.float64)
    kept = deduplicate(rles, boxes, areas, dedup_iou, limit=max_proposals)
    masks = [{"size": [h, w], "counts": rles[i]["counts"].decode("ascii")} for i in kept]
    return Proposals((h, w), boxes[kept], masks, score[kept])
