"""On-disk proposal cache: one ``.npz`` (our format, see :mod:`wsis.proposals.precomputed`) per image.

The key is the sha1 of the image file's bytes -- so a renamed or copied image hits the cache and an
edited one misses -- plus the method name and its settings as stable JSON (sorted keys), so a change
of any setting recomputes. Files live at ``root/<method>/<image sha1[:2]>/<image sha1>-<settings
sha1[:12]>.v2.npz`` (v2: the ``rle_ascii`` layout of :func:`~wsis.proposals.precomputed.write_npz`;
older entries are not read, so two versions of wsis never read each other's files) and are written
atomically, so a killed run leaves only complete entries and a rerun resumes. A file that cannot be
read (truncated, foreign) is recomputed, not an error.

Because the key says everything the proposals depend on, one cache serves every method and every
run: :func:`default_cache_root` is the shared one (``$WSIS_CACHE/proposals``, else
``$XDG_CACHE_HOME/wsis/proposals``, else ``~/.cache/wsis/proposals``), which every method uses unless
its config names a folder (``proposals.cache_dir``), so an image's proposals are computed once,
whichever method or run asks first.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from wsis.errors import InputError
from wsis.proposals import Proposals, generate_proposals
from wsis.proposals.precomputed import read_npz, write_npz


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 image; uses :func:`wsis.data.images.load_image` when that module exists."""
    try:
        from wsis.data.images import load_image
    except ImportError:
        load_image = None
    if load_image is not None:
        return load_image(path)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise InputError(path, "image not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"cannot read image ({exc})") from None


def file_sha1(path: str | Path) -> str:
    """sha1 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise InputError(path, "image not found") from None
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """Settings -> JSON-able values (dataclasses such as mask strategies become dicts)."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def settings_key(method: str, settings: dict[str, Any]) -> str:
    """Stable hash of a method and its settings."""
    text = json.dumps({"method": method, "settings": _plain(settings)}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


CACHE_FORMAT = "v2"


def default_cache_root() -> Path:
    """The shared cache folder (module docstring)."""
    if os.environ.get("WSIS_CACHE"):
        return Path(os.environ["WSIS_CACHE"]) / "proposals"
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "wsis" / "proposals"


class ProposalCache:
    """Proposals of images by content, method and settings, stored under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry(self, image_path: str | Path, method: str, **settings: Any) -> Path:
        """Where the proposals of this image, method and settings are (or will be) stored."""
        image_key = file_sha1(image_path)
        safe_method = "".join(c if c.isalnum() or c in "-_" else "_" for c in method)
        name = f"{image_key}-{settings_key(method, settings)[:12]}.{CACHE_FORMAT}.npz"
        return self.root / safe_method / image_key[:2] / name

    def load(self, entry: Path) -> Proposals | None:
        """The cached proposals, or None when the entry is missing or unreadable."""
        if not entry.is_file():
            return None
        try:
            return read_npz(entry)
        except InputError:
            return None

    def get_or_compute(self, image_path: str | Path, method: str = "superpixel", **settings: Any) -> Proposals:
        """Cached proposals of an image, computing and storing them on a miss."""
        entry = self.entry(image_path, method, **settings)
        cached = self.load(entry)
        if cached is not None:
            return cached
        proposals = generate_proposals(read_image(image_path), method, **settings)
        write_npz(entry, proposals)
        return proposals

    def generate_all(self, paths: Iterable[str | Path], method: str = "superpixel", workers: int = 1,
                     progress: bool = True, **settings: Any) -> dict[Path, Path]:
        """Fill the cache for many images (``workers`` processes); returns image path -> cache file.

        Cached images are skipped before any work is sent out, so a killed run resumes where it
        stopped. Workers are spawned (not forked), so this behaves the same on every OS and never
        inherits OpenCV's thread pool mid-flight.
        """
        entries = {Path(p): self.entry(p, method, **settings) for p in paths}
        todo = [p for p, e in entries.items() if self.load(e) is None]
        bar = tqdm(total=len(entries), initial=len(entries) - len(todo), desc=f"proposals ({method})",
                   disable=not progress, unit="img")
        try:
            if workers <= 1 or len(todo) <= 1:
                for p in todo:
                    self.get_or_compute(p, method, **settings)
                    bar.update()
            else:
                with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_worker_init) as pool:
                    futures = [pool.submit(_compute_entry, str(self.root), str(p), method, settings) for p in todo]
                    for future in as_completed(futures):
                        future.result()
                        bar.update()
        finally:
            bar.close()
        return entries


def _worker_init() -> None:
    # One OpenCV thread per worker process: the pool already spreads the work over the cores.
    import cv2

    cv2.setNumThreads(1)


def _compute_entry(root: str, image_path: str, method: str, settings: dict[str, Any]) -> str:
    """Worker body (module level so spawned processes can import it)."""
    ProposalCache(root).get_or_compute(image_path, method, **settings)
    return image_path
