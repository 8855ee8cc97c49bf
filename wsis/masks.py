"""Mask encodings: COCO run-length encoding (RLE), polygons and bool arrays.

RLE dicts are the compressed COCO form ``{"size": [h, w], "counts": str}`` everywhere in wsis, so
that masks of thousands of instances fit in memory and IoUs run in pycocotools' C code.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

RLE = dict  # {"size": [h, w], "counts": str}


@contextmanager
def opencv_single_thread() -> Iterator[None]:
    """OpenCV on one thread for a loop of small calls (one mask each), its thread count restored
    after: OpenCV splits every call over its pool, which for a 448 x 448 mask costs more than the
    work; measured on the 2-core machine under load, 1000 morphological gradients took 3.0 s with
    2 threads and 0.4 s with 1 (``contour_masks``), the same masks either way."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def encode(mask: np.ndarray) -> RLE:
    """Bool/uint8 (H, W) array -> compressed RLE with ``counts`` as a str (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def encode_many(masks: np.ndarray) -> list[RLE]:
    """(N, H, W) array -> list of N compressed RLEs."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return list(rles)


def _for_coco(rle: RLE) -> RLE:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return mask_utils.frPyObjects(rle, *rle["size"])
    if isinstance(counts, str):
        return {"size": rle["size"], "counts": counts.encode("ascii")}
    return rle


def compress(rle: RLE) -> RLE:
    """Any RLE (compressed or the uncompressed ``counts: list`` form) -> compressed str form."""
    out = _for_coco(rle)
    counts = out["counts"]
    return {"size": list(out["size"]), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def decode(rle: RLE) -> np.ndarray:
    """RLE -> (H, W) bool array."""
    return mask_utils.decode(_for_coco(rle)).astype(bool)


def decode_many(rles: Sequence[RLE], size: tuple[int, int] | None = None) -> np.ndarray:
    """List of RLEs -> (N, H, W) bool array (``size`` gives the shape when the list is empty)."""
    if len(rles) == 0:
        h, w = size if size is not None else (0, 0)
        return np.zeros((0, h, w), dtype=bool)
    return mask_utils.decode([_for_coco(r) for r in rles]).transpose(2, 0, 1).astype(bool)


def decode_resized(rles: Sequence[RLE], size: tuple[int, int], height: int, width: int,
                   chunk: int = 64) -> np.ndarray:
    """RLEs of ``size`` (h, w) -> (N, height, width) bool, each mask resized as OpenCV's
    INTER_NEAREST_EXACT does (equal to decoding, then ``cv2.resize`` of each mask; tested).

    pycocotools decodes into a column-major (h, w, N) block, i.e. N transposed masks (w, h) in
    memory: each is resized in that orientation (nearest neighbour works per axis, so this is the
    transpose of resizing the mask) and transposed back by OpenCV, ``chunk`` masks at a time,
    without the full-resolution bool copy a plain decode makes."""
    import cv2

    out = np.empty((len(rles), height, width), dtype=bool)
    if len(rles) == 0:
        return out
    target = out.view(np.uint8)
    with opencv_single_thread():
        for start in range(0, len(rles), chunk):
            block = mask_utils.decode([_for_coco(r) for r in rles[start:start + chunk]])  # (h, w, n)
            by_column = np.ascontiguousarray(block.transpose(2, 1, 0))  # (n, w, h): a view when Fortran
            for i, m in enumerate(by_column):
                small = cv2.resize(m, (height, width), interpolation=cv2.INTER_NEAREST_EXACT)  # (width, height)
                cv2.transpose(small, dst=target[start + i])
    return out


def area(rles: Sequence[RLE]) -> np.ndarray:
    """Pixel counts (N,) float64."""
    if len(rles) == 0:
        return np.zeros(0, dtype=np.float64)
    coco = [_for_coco(r) for r in rles]
    # pycocotools' area() sizes its output with a uint8 (fails for > 255 masks under NumPy 2): chunk.
    return np.concatenate(
        [mask_utils.area(coco[i:i + 255]) for i in range(0, len(coco), 255)]
    ).astype(np.float64)


def to_bbox(rles: Sequence[RLE]) -> np.ndarray:
    """Tight boxes (N, 4) in xyxy pixel-edge coordinates; an empty mask gives a zero box."""
    if len(rles) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    xywh = mask_utils.toBbox([_for_coco(r) for r in rles]).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)


def iou(dts: Sequence[RLE], gts: Sequence[RLE], crowd: Sequence[bool] | None = None) -> np.ndarray:
    """Mask IoU matrix (len(dts), len(gts)).

    For a ground truth flagged crowd the value is intersection / area(dt), COCO's convention,
    because a crowd region covers many objects and a single prediction can only ever cover part.
    """
    if len(dts) == 0 or len(gts) == 0:
        return np.zeros((len(dts), len(gts)), dtype=np.float64)
    flags = [0] * len(gts) if crowd is None else [int(c) for c in crowd]
    return np.asarray(
        mask_utils.iou([_for_coco(r) for r in dts], [_for_coco(r) for r in gts], flags), dtype=np.float64
    ).reshape(len(dts), len(gts))


def subtract(rles: Sequence[RLE], region: np.ndarray) -> list[RLE]:
    """Remove the pixels of a bool ``region`` from every mask (used for VOC's 255 ignore band)."""
    if len(rles) == 0:
        return []
    masks = decode_many(rles)
    masks &= ~region[None]
    return encode_many(masks)


def polygons_to_rle(polygons: list[list[float]], height: int, width: int) -> RLE:
    """COCO polygon list (several parts allowed) -> one compressed RLE."""
    parts = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return compress(mask_utils.merge(parts))


def segmentation_to_rle(segm: Any, height: int, width: int) -> RLE:
    """Any COCO ``segmentation`` value (polygons, compressed or uncompressed RLE) -> compressed RLE."""
    if isinstance(segm, list):
        return polygons_to_rle(segm, height, width)
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        return compress(segm)
    raise ValueError(f"unsupported segmentation of type {type(segm).__name__}")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between (N, 4) and (M, 4) xyxy boxes (continuous coordinates)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def resize_nearest(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W) bool -> (N, height, width), nearest neighbour at pixel centres (OpenCV's
    INTER_NEAREST_EXACT: source index floor((i + 0.5) * H / height)), one mask at a time."""
    out = np.empty((len(masks), height, width), dtype=bool)
    for i, m in enumerate(np.ascontiguousarray(masks).view(np.uint8)):
        out[i] = cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST_EXACT).view(bool)
    return out


def resize_nonempty(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """:func:`resize_nearest`, except that a non-empty mask stays non-empty: shrinking a mask
    thinner than the sampling step can miss every one of its pixels (a 1-pixel line at 1/3 scale
    has a 1-in-3 chance per row), and an instance would silently lose its mask. Such a mask keeps
    the output pixels its area covers most."""
    out = resize_nearest(masks, height, width)
    lost = np.flatnonzero(~out.reshape(len(out), -1).any(axis=1) & masks.reshape(len(masks), -1).any(axis=1))
    for i in lost:
        cover = cv2.resize(masks[i].astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        out[i] = cover >= cover.max()
    return out
