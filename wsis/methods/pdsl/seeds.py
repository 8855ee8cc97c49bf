"""PDSL's seed sample acquisition (``papers/002``, section 3.3) and the on-disk GrabCut cache.

Seed acquisition, per training image, from the boxes of its P proposals and, for each tagged class,
the index of its highest-scoring proposal (:func:`assign_seeds`):

1. the proposals are sorted by IoU with the class's top proposal (descending; the top proposal
   itself, IoU 1, comes first) and the first ``n_seed`` are that class's seeds;
2. the seeds of all tagged classes are pooled (a proposal that is a seed of two classes is one
   seed);
3. every proposal copies the mask of the seed whose box overlaps it most (a seed its own).
   Ties go to the seed of lowest proposal index.

Only the seeds get a GrabCut mask. The GrabCut mask of a box depends only on the image, the box and
the GrabCut settings, so :class:`GrabCutCache` computes it once and keeps it on disk: one ``.npz``
per image at ``root/<image sha1[:2]>/<image sha1>-<settings sha1[:12]>.npz`` holding the boxes and
their masks as RLE strings, rewritten atomically when a mask is added. It is keyed by the box
coordinates (not by a proposal index), so runs with other proposal settings, other ablation variants
and resumed runs share it. OpenCV's GrabCut seeds its k-means from OpenCV's global generator, so the
generator is reset before every call: a mask is then the same whether computed first or fiftieth.

Which score picks the "highest-score proposal": the paper does not say; here it is the score the
last refinement head's pseudo labels are made from (the previous head's, WSDDN's S^0 when there is
at most one refinement head), so the seeds surround the same box as the detection pseudo ground
truth, and follow the detector as it trains (the paper recomputes them every iteration too).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

from wsis import masks as mask_ops
from wsis.data.images import atomic_write, load_image
from wsis.proposals.cache import file_sha1, settings_key
from wsis.proposals.grabcut import grabcut_one

GrabCutFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class SeedAssignment:
    """``seeds`` (S,) proposal indices, ascending; ``source`` (P,) index into ``seeds`` of the seed
    whose mask each proposal copies."""

    seeds: torch.Tensor
    source: torch.Tensor


@torch.no_grad()
def assign_seeds(boxes: torch.Tensor, top: torch.Tensor, n_seed: int) -> SeedAssignment:
    """Seed acquisition for one image: ``boxes`` (P, 4), ``top`` (K,) top proposal per tagged class."""
    p = len(boxes)
    if len(top) == 0 or p == 0:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return SeedAssignment(empty, torch.full((p,), -1, dtype=torch.long, device=boxes.device))
    iou = box_iou(boxes[top], boxes)                                  # (K, P)
    order = torch.argsort(-iou, dim=1, stable=True)[:, :n_seed]       # stable: lower index first on ties
    seeds = torch.unique(order.flatten())                             # sorted ascending
    best = box_iou(boxes, boxes[seeds])                               # (P, S)
    source = best.argmax(dim=1)                                       # first maximum = lowest seed index
    source[seeds] = torch.arange(len(seeds), device=boxes.device)     # a duplicate box must not shadow a seed
    return SeedAssignment(seeds, source)


def _box_key(box: np.ndarray) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in np.round(np.asarray(box, np.float64), 2))  # type: ignore[return-value]


class GrabCutCache:
    """GrabCut masks of boxes of images, computed once and stored on disk (see module docstring).

    ``grabcut_fn(image, box) -> (H, W) bool`` replaces OpenCV's GrabCut (tests inject one).
    """

    def __init__(self, root: str | Path, iterations: int = 5, margin: float = 0.25, max_side: int = 160,
                 grabcut_fn: GrabCutFn | None = None) -> None:
        self.root = Path(root)
        self.settings = {"iterations": iterations, "margin": margin, "max_side": max_side}
        self.grabcut_fn = grabcut_fn or self._opencv
        self._tables: dict[str, dict[tuple, dict]] = {}
        self._sha: dict[str, str] = {}
        self.computed = 0  # GrabCut calls made by this object (the rest came from the cache)

    def _opencv(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        cv2.setRNGSeed(0)
        return grabcut_one(image, box, **self.settings)

    def entry(self, image_path: str | Path) -> Path:
        key = str(image_path)
        if key not in self._sha:
            self._sha[key] = file_sha1(image_path)
        sha = self._sha[key]
        return self.root / sha[:2] / f"{sha}-{settings_key('grabcut', self.settings)[:12]}.npz"

    def _read(self, entry: Path) -> dict[tuple, dict]:
        if not entry.is_file():
            return {}
        try:
            with np.load(entry, allow_pickle=False) as data:
                size = [int(v) for v in data["size"]]
                return {_box_key(b): {"size": size, "counts": str(c)} for b, c in zip(data["boxes"], data["counts"])}
        except (OSError, ValueError, KeyError):
            return {}  # truncated or foreign file: recompute its masks

    def _write(self, entry: Path, table: dict[tuple, dict]) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        boxes = np.asarray(list(table), np.float64).reshape(-1, 4)
        counts = np.asarray([m["counts"] for m in table.values()], dtype=str)
        size = np.asarray(next(iter(table.values()))["size"], np.int64)
        with atomic_write(entry, "wb") as f:
            np.savez(f, boxes=boxes, counts=counts, size=size)

    def masks(self, image_path: str | Path, boxes: np.ndarray) -> np.ndarray:
        """(S, H, W) bool GrabCut masks of (S, 4) xyxy boxes in original image coordinates."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        entry = self.entry(image_path)
        table = self._tables.get(str(entry))
        if table is None:
            table = self._tables[str(entry)] = self._read(entry)
        keys = [_box_key(b) for b in boxes]
        missing = [i for i, k in enumerate(keys) if k not in table]
        if missing:
            image = load_image(image_path)
            for i in missing:
                if keys[i] not in table:  # the same box twice in one call is computed once
                    table[keys[i]] = mask_ops.encode(self.grabcut_fn(image, boxes[i]))
                    self.computed += 1
            self._write(entry, table)
        rles = [table[k] for k in keys]
        if not rles:
            return np.zeros((0, 0, 0), bool)
        return mask_ops.decode_many(rles)
