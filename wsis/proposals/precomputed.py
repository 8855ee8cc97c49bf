"""Readers for proposals computed elsewhere, one :class:`Proposals` per image file.

Formats (every reader raises :class:`InputError` naming the file when it does not fit):

* **MCG / COB ``.mat``** (``im2mcg`` of jponttuset/mcg, ``im2cob`` of kmaninis/COB; MATLAB's
  ``save``): ``superpixels`` -- (H, W) label image, labels 1..S; ``labels`` -- cell array (N x 1) whose
  i-th entry lists the 1-based superpixel ids forming proposal i; ``scores`` -- (N x 1) objectness,
  higher is better. The fields may sit at the top level of the file or inside one struct (MCG's
  demo saves the whole ``candidates`` struct). Any ``bboxes`` field is ignored: boxes are recomputed
  from the masks. Mask i = union of its superpixels.
* **Box ``.mat``** (Uijlings' selective search, MCG's ``*-boxes`` releases, the Fast R-CNN
  ``selective_search_data``): ``boxes`` as [y1 x1 y2 x2], 1-based, inclusive pixel indices; either
  one (N x 4) matrix (one image per file) or a cell array with one matrix per image plus
  ``images`` (the image names, matched by ``image_name`` -- the stem of the image file). Optional
  ``scores`` of the same layout; without it the order is the rank (``1 - i / N``). Converted to
  xyxy pixel-edge coordinates: ``x1 - 1, y1 - 1, x2, y2``.
* **wsis ``.npz``** (ours, also the cache format): ``boxes`` (N, 4) float xyxy pixel-edge;
  ``scores`` (N,) float, higher is better; ``image_size`` (2,) int [height, width]; optionally
  masks, either ``rle_counts`` (N,) str -- the compressed COCO RLE ``counts`` strings of masks of
  size ``image_size`` --, the same strings as ``rle_ascii`` (uint8, all strings' ASCII bytes one
  after the other) with ``rle_lengths`` (N,) int (what :func:`write_npz` writes: a (N,) str array
  is stored as UTF-32 padded to the longest string, ~10x larger, and reading a cached image's
  proposals spent most of its time decompressing it), or ``masks`` (N, H, W) bool/uint8.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
import scipy.io

from wsis import masks as mask_ops
from wsis.errors import InputError
from wsis.proposals import Proposals


def read_proposals(path: str | Path, image_size: tuple[int, int] | None = None,
                   image_name: str | None = None) -> Proposals:
    """Any supported file by extension and content: ``.npz`` ours, ``.mat`` MCG/COB or boxes."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return read_npz(path)
    if path.suffix.lower() == ".mat":
        data = _loadmat(path)
        if _find_fields(data, ("superpixels", "labels")) is not None:
            return read_mcg(path)
        if image_size is None:
            raise InputError(path, "a box .mat needs the image size (height, width) to clip its boxes")
        return read_box_mat(path, image_size, image_name)
    raise InputError(path, "unknown proposal file type (expected .npz or .mat)")


def _loadmat(path: Path) -> dict[str, Any]:
    try:
        return scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=False)
    except FileNotFoundError:
        raise InputError(path, "proposal file not found") from None
    except NotImplementedError:
        raise InputError(path, "MATLAB v7.3 (HDF5) .mat files are not supported; "
                               "re-save with save(..., '-v7')") from None
    except Exception as exc:  # scipy raises assorted errors for a file that is not a .mat
        raise InputError(path, f"not a readable .mat file ({exc})") from None


def _find_fields(data: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any] | None:
    """The dict (top level or one struct variable) that holds all ``names``; None if there is none."""
    if all(n in data for n in names):
        return data
    for key, value in data.items():
        if key.startswith("__"):
            continue
        item = value
        if isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
            item = item.flat[0]
        if hasattr(item, "_fieldnames") and all(n in item._fieldnames for n in names):
            return {n: getattr(item, n) for n in item._fieldnames}
    return None


def read_mcg(path: str | Path) -> Proposals:
    """MCG or COB candidates (superpixels + labels + scores) -> mask proposals."""
    path = Path(path)
    fields = _find_fields(_loadmat(path), ("superpixels", "labels"))
    if fields is None:
        raise InputError(path, "no 'superpixels' and 'labels' fields (not an MCG/COB candidates file)")
    superpixels = np.asarray(fields["superpixels"])
    if superpixels.ndim != 2 or not np.issubdtype(superpixels.dtype, np.number):
        raise InputError(path, f"'superpixels' must be a 2-D label image, got shape {superpixels.shape}")
    superpixels = superpixels.astype(np.int64)
    members = _cell_list(path, fields["labels"], "labels")
    n = len(members)
    scores = fields.get("scores")
    scores = np.ones(n) if scores is None else np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != n:
        raise InputError(path, f"{len(scores)} scores for {n} proposals")
    num_sp = int(superpixels.max())
    if superpixels.min() < 1:
        raise InputError(path, "superpixel labels must start at 1 (MATLAB convention)")
    from wsis.proposals.masks import superpixel_rles
    from pycocotools import mask as mask_utils

    pieces = superpixel_rles(superpixels - 1)
    rles = []
    for i, ids in enumerate(members):
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0 or ids.min() < 1 or ids.max() > num_sp:
            raise InputError(path, f"proposal {i + 1} names superpixels outside 1..{num_sp}")
        rle = mask_utils.merge([pieces[j - 1] for j in ids], intersect=False) if len(ids) > 1 else pieces[ids[0] - 1]
        rles.append(mask_ops.compress(rle))
    return Proposals(superpixels.shape, mask_ops.to_bbox(rles), rles, scores)


def _cell_list(path: Path, cell: Any, name: str) -> list[np.ndarray]:
    """A MATLAB cell array (or a plain numeric matrix, one row per entry) -> list of arrays."""
    cell = np.asarray(cell)
    if cell.dtype == object:
        return [np.asarray(c) for c in cell.reshape(-1)]
    if np.issubdtype(cell.dtype, np.number):
        return list(cell.reshape(cell.shape[0], -1)) if cell.ndim == 2 else [cell.reshape(-1)]
    raise InputError(path, f"'{name}' must be a cell array or a numeric matrix")


def read_box_mat(path: str | Path, image_size: tuple[int, int], image_name: str | None = None) -> Proposals:
    """Selective-search style ``boxes`` ([y1 x1 y2 x2], 1-based inclusive) -> box proposals."""
    path = Path(path)
    data = _loadmat(path)
    if "boxes" not in data:
        raise InputError(path, "no 'boxes' field (not a selective-search/MCG box file)")
    boxes, scores = np.asarray(data["boxes"]), data.get("scores")
    if boxes.dtype == object:
        index = _image_index(path, data, image_name, boxes.size)
        boxes = np.asarray(boxes.reshape(-1)[index])
        if scores is not None:
            scores = np.asarray(scores).reshape(-1)[index]
    if boxes.size and (boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype, np.number)):
        raise InputError(path, f"'boxes' must be N x 4 [y1 x1 y2 x2], got shape {boxes.shape}")
    boxes = boxes.astype(np.float64).reshape(-1, 4)
    n = len(boxes)
    if scores is None:
        scores = 1.0 - np.arange(n) / max(n, 1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != n:
        raise InputError(path, f"{len(scores)} scores for {n} boxes")
    h, w = image_size
    xyxy = np.stack([boxes[:, 1] - 1, boxes[:, 0] - 1, boxes[:, 3], boxes[:, 2]], axis=1)
    xyxy = np.clip(xyxy, 0, [w, h, w, h])
    return Proposals((h, w), xyxy, None, scores)


def _image_index(path: Path, data: dict[str, Any], image_name: str | None, count: int) -> int:
    if count == 1 and image_name is None:
        return 0
    if image_name is None:
        raise InputError(path, f"holds boxes of {count} images: say which image (image_name)")
    if "images" not in data:
        raise InputError(path, "holds boxes of several images but no 'images' list to find one by name")
    entries = [np.asarray(x).reshape(-1) for x in np.asarray(data["images"]).reshape(-1)]
    names = [str(x[0]) if x.size else "" for x in entries]
    stems = [Path(n).stem for n in names]
    wanted = Path(image_name).stem
    if wanted not in stems:
        raise InputError(path, f"no boxes for image {image_name!r}")
    return stems.index(wanted)


def read_npz(path: str | Path) -> Proposals:
    """Our open format (module docstring) -> Proposals."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise InputError(path, "proposal file not found") from None
    except Exception as exc:  # zipfile/pickle/ValueError for a damaged or foreign file
        raise InputError(path, f"not a readable .npz file ({exc})") from None
    for key in ("boxes", "scores", "image_size"):
        if key not in arrays:
            raise InputError(path, f"missing array {key!r} (expected boxes, scores, image_size)")
    size = tuple(int(v) for v in arrays["image_size"].reshape(-1))
    boxes = arrays["boxes"]
    if len(size) != 2 or boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(path, f"bad shapes: image_size {arrays['image_size'].shape}, boxes {boxes.shape}")
    masks = None
    if "rle_ascii" in arrays and "rle_lengths" in arrays:
        text = arrays["rle_ascii"].tobytes().decode("ascii")
        ends = np.cumsum(arrays["rle_lengths"].reshape(-1))
        if len(ends) and ends[-1] != len(text):
            raise InputError(path, f"rle_lengths sum to {ends[-1]}, rle_ascii holds {len(text)} bytes")
        starts = np.concatenate([[0], ends[:-1]]).tolist()
        masks = [{"size": list(size), "counts": text[a:b]} for a, b in zip(starts, ends.tolist())]
    elif "rle_counts" in arrays:
        masks = [{"size": list(size), "counts": str(c)} for c in arrays["rle_counts"].reshape(-1)]
    elif "masks" in arrays:
        m = arrays["masks"]
        if m.ndim != 3 or m.shape[1:] != size:
            raise InputError(path, f"masks of shape {m.shape} do not match image_size {size}")
        masks = mask_ops.encode_many(m.astype(bool))
    try:
        return Proposals(size, boxes, masks, arrays["scores"])
    except (ValueError, TypeError) as exc:
        raise InputError(path, str(exc)) from None


def write_npz(path: str | Path, proposals: Proposals) -> None:
    """Save in our ``.npz`` format, atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "boxes": proposals.boxes.astype(np.float32),
        "scores": proposals.objectness.astype(np.float32),
        "image_size": np.asarray(proposals.image_size, np.int64),
    }
    if proposals.masks is not None:
        counts = [m["counts"] for m in proposals.masks]
        arrays["rle_ascii"] = np.frombuffer("".join(counts).encode("ascii"), dtype=np.uint8)
        arrays["rle_lengths"] = np.asarray([len(c) for c in counts], dtype=np.int64)
    with _atomic_write(path) as handle:
        np.savez_compressed(handle, **arrays)


def _atomic_write(path: Path):
    """wsis.data.images.atomic_write when present, else the same temp-file-then-rename done here."""
    try:
        from wsis.data.images import atomic_write
    except ImportError:
        atomic_write = None
    if atomic_write is not None:
        return atomic_write(path, "wb")
    return _local_atomic_write(path)


@contextmanager
def _local_atomic_write(path: Path) -> Iterator[IO[bytes]]:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
