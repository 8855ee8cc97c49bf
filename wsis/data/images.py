"""Safe file access for datasets: image decoding, header-only sizes, path joins and atomic writes.

Every failure caused by a user's file becomes an :class:`~wsis.errors.InputError` naming it, so a
corrupt JPEG in a 100k-image dataset reports which one instead of a PIL traceback.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import cv2
import numpy as np
from PIL import Image

from wsis.errors import InputError

# What PIL raises for unreadable data: OSError covers UnidentifiedImageError and truncation,
# SyntaxError/ValueError come from some malformed headers (e.g. broken PNG chunks).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: PIL's RGB conversion clips at 255, so rescale the range instead.
        gray = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(gray.max()), 1.0)
        gray = np.clip(gray / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image as an (H, W, 3) uint8 RGB array.

    EXIF orientation is deliberately ignored: COCO/VOC annotations refer to the stored pixel grid.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image not found")
    try:
        with Image.open(path) as image:
            image.load()  # decode now so a truncated file fails here, naming the file
            return _to_rgb(image)
    except _DECODE_ERRORS as exc:
        raise InputError(path, f"cannot read image ({exc})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) read from the file header only (no pixel decoding)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image not found")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except _DECODE_ERRORS as exc:
        raise InputError(path, f"cannot read image header ({exc})") from None
    return int(height), int(width)


def safe_join(root: str | Path, name: str, listed_in: str | Path | None = None) -> Path:
    """``root / name`` where ``name`` comes from a dataset file (``listed_in``).

    Rejects absolute names and names that leave ``root`` through ``..``, because an annotation file
    must not make us read (or overwrite) files outside the dataset.
    """
    source = listed_in if listed_in is not None else root
    text = str(name)
    if not text.strip():
        raise InputError(source, "empty file name")
    pure = Path(text)
    if pure.is_absolute() or text.startswith(("/", "\\")) or pure.drive:
        raise InputError(source, f"file name {text!r} is absolute; names must be relative to {root}")
    normal = os.path.normpath(text.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        raise InputError(source, f"file name {text!r} escapes the folder {root}")
    return Path(root) / normal


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success move it over ``path`` in one step.

    Readers never see a half-written file, and a crash or exception leaves the old file (or none)
    in place: the temporary is removed.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    # os.open with 0o666 honours the umask, unlike tempfile's private 0o600 files.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding, "newline": ""})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB image as PNG, atomically."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    with atomic_write(path, "wb") as f:
        f.write(data.tobytes())


def check_decodable(path: str | Path) -> None:
    """Decode ``path`` fully (JPEGs at 1/8 scale: the whole stream is still read, the DCT work is
    not), so a truncated or corrupt file fails before a long job starts, naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image not found")
    try:
        with Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except _DECODE_ERRORS as exc:
        raise InputError(path, f"cannot read image ({exc})") from None
