"""Synthetic demo scenes: the embedded dataset that ``wsis demo`` trains on.

Each class is a shape family with its own texture (a "dotted disc", a "striped square", ...).
Colours are random per object and the background is a smooth random colour field with distractor
strokes and blobs painted in the same textures, so neither colour nor texture alone gives the class
or the object extent: a classifier has to learn shape and texture together, and localising needs
learning (a global threshold does not segment the objects). Later objects occlude earlier ones; the
ground truth masks are the visible parts, and an object is only placed where it leaves every earlier
object at least ``min_visible`` of its own area, so every painted object is annotated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from wsis import masks as mask_ops
from wsis.data.images import write_png
from wsis.errors import InputError
from wsis.structures import ImageRecord, Instances, RecordSet

# category id -> name; ids start at 1 like every dataset's own ids (0 stays free for background).
SYNTHETIC_CLASSES: dict[int, str] = {
    1: "dotted disc",
    2: "striped square",
    3: "checkered triangle",
    4: "speckled ring",
    5: "wavy cross",
}

_PLACEMENT_TRIES = 30
_MIN_CONTRAST = 70.0  # mean |colour_a - colour_b| so that an object's texture stays visible


def _rotated_coords(
    h: int, w: int, centre: tuple[float, float], angle: float, scale: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in an object's frame: rotated by ``angle``, divided by ``scale``."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    dx, dy = xs - centre[0], ys - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    return (c * dx + s * dy) / scale[0], (-s * dx + c * dy) / scale[1]


# --- shapes: (u, v) in the object's unit frame -> bool mask -------------------------------------

def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.85


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral triangle inscribed in the unit circle: three half-planes at distance 0.5.
    normals = np.array([[0.0, 1.0], [-0.8660254, -0.5], [0.8660254, -0.5]], np.float32)
    d = u[..., None] * normals[:, 0] + v[..., None] * normals[:, 1]
    return d.max(axis=-1) <= 0.5


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.55**2)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


# --- textures: (u, v) in pixels, rotated -> float pattern in [0, 1] -----------------------------

def _dots(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    fu = np.mod(u, period) - period / 2
    fv = np.mod(v, period) - period / 2
    return (fu * fu + fv * fv <= (0.3 * period) ** 2).astype(np.float32)


def _stripes(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    return (np.mod(u, period) < period / 2).astype(np.float32)


def _checks(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)


def _speckle(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    # Irregular cells: an integer hash of the cell index, random-looking yet exact on every CPU.
    # (A regular grid would be confused with the dots once its two colours are swapped.)
    cell = 0.5 * period
    i = np.floor(u / cell).astype(np.int64)
    j = np.floor(v / cell).astype(np.int64)
    h = ((i * 73856093) ^ (j * 19349663)) * 2654435761 % (1 << 32)
    return ((h >> 16) & 1).astype(np.float32)


def _waves(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    return (np.sin(2 * np.pi * (u + 0.3 * period * np.sin(2 * np.pi * v / (2 * period))) / period) > 0).astype(
        np.float32
    )


Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]
Texture = Callable[[np.ndarray, np.ndarray, float], np.ndarray]

_SHAPES: dict[int, Shape] = {1: _disc, 2: _square, 3: _triangle, 4: _ring, 5: _cross}
_TEXTURES: dict[int, Texture] = {1: _dots, 2: _stripes, 3: _checks, 4: _speckle, 5: _waves}


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours different enough for a texture drawn with them to show."""
    while True:
        a, b = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        if np.abs(a - b).mean() >= _MIN_CONTRAST:
            return a, b


def _textured_layer(
    rng: np.random.Generator, h: int, w: int, texture: Texture, period_range: tuple[float, float]
) -> np.ndarray:
    """An (H, W, 3) float image filled with ``texture`` in two random colours, random phase/angle."""
    angle = rng.uniform(0, np.pi)
    phase = rng.uniform(0, 100, size=2)
    u, v = _rotated_coords(h, w, (float(phase[0]), float(phase[1])), angle, (1.0, 1.0))
    t = texture(u, v, float(rng.uniform(*period_range)))[..., None]
    a, b = _colour_pair(rng)
    return a * (1 - t) + b * t


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random colour field: a few random colours on a coarse grid, upsampled bicubically."""
    grid = int(rng.integers(3, 7))
    coarse = rng.uniform(0, 255, size=(grid, grid, 3)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255)


def _blob_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An irregular star-shaped polygon: a radius that wobbles at random around the centre."""
    n = 24
    base = rng.uniform(0.06, 0.16) * min(h, w)
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    harmonics = rng.normal(0, 0.35, size=(3, 2))
    radius = base * (1 + sum(harmonics[k, 0] * np.cos((k + 2) * theta) + harmonics[k, 1] * np.sin((k + 2) * theta)
                             for k in range(3)))
    radius = np.clip(radius, 0.3 * base, None)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    pts = np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def _stroke_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A thick random-walk curve."""
    steps = int(rng.integers(3, 7))
    start = rng.uniform([0, 0], [w, h])
    moves = rng.normal(0, 0.15 * min(h, w), size=(steps, 2))
    pts = np.vstack([start, start + np.cumsum(moves, axis=0)])
    mask = np.zeros((h, w), np.uint8)
    thickness = int(rng.integers(2, max(3, min(h, w) // 16)))
    cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, 1, thickness=thickness, lineType=cv2.LINE_8)
    return mask.astype(bool)


def _paint_distractors(rng: np.random.Generator, canvas: np.ndarray, count: int, period_range: tuple[float, float]) -> None:
    """Strokes and blobs of no class, in the class textures, so texture alone does not mark objects."""
    h, w = canvas.shape[:2]
    for _ in range(count):
        region = _blob_mask(rng, h, w) if rng.random() < 0.5 else _stroke_mask(rng, h, w)
        texture = _TEXTURES[int(rng.integers(1, len(_TEXTURES) + 1))]
        layer = _textured_layer(rng, h, w, texture, period_range)
        canvas[region] = layer[region]


def _object_mask(rng: np.random.Generator, label: int, h: int, w: int, size_range: tuple[float, float]) -> np.ndarray:
    """The full (unoccluded) mask of one object of class ``label`` at a random pose."""
    radius = rng.uniform(*size_range) * min(h, w)
    aspect = np.exp(rng.uniform(-0.3, 0.3))
    scale = (radius * aspect, radius / aspect)
    # Keep the centre inside the image with a margin so most of the object is in view.
    margin = 0.5 * radius
    centre = (float(rng.uniform(margin, w - margin)), float(rng.uniform(margin, h - margin)))
    u, v = _rotated_coords(h, w, centre, float(rng.uniform(0, 2 * np.pi)), scale)
    return _SHAPES[label](u, v)


def make_scene(
    rng: np.random.Generator,
    image_size: tuple[int, int] = (128, 128),
    min_objects: int = 1,
    max_objects: int = 4,
    *,
    min_visible: float = 0.5,
    size_range: tuple[float, float] = (0.12, 0.24),
    distractors: tuple[int, int] = (2, 6),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: ``(image uint8 (H, W, 3) RGB, labels (N,) int64, visible masks (N, H, W) bool)``.

    ``size_range`` is the object radius as a fraction of the shorter image side. An object is
    dropped when no pose found in a few tries keeps every earlier object at least ``min_visible``
    visible, so N can fall below the number asked for (never below 1 when ``min_objects >= 1``).
    """
    h, w = int(image_size[0]), int(image_size[1])
    period_range = (max(3.0, min(h, w) / 32), max(5.0, min(h, w) / 16))
    canvas = _background(rng, h, w)
    _paint_distractors(rng, canvas, int(rng.integers(distractors[0], distractors[1] + 1)), period_range)

    wanted = int(rng.integers(min_objects, max_objects + 1))
    owner = np.full((h, w), -1, np.int64)
    labels: list[int] = []
    full_area: list[int] = []
    for _ in range(wanted):
        label = int(rng.integers(1, len(SYNTHETIC_CLASSES) + 1))
        for _ in range(_PLACEMENT_TRIES):
            mask = _object_mask(rng, label, h, w, size_range)
            area = int(mask.sum())
            if area < 0.25 * np.pi * (size_range[0] * min(h, w)) ** 2:
                continue  # mostly outside the image or too thin to learn from
            if labels:
                remaining = np.bincount(owner[~mask & (owner >= 0)], minlength=len(labels))
                if np.any(remaining < min_visible * np.asarray(full_area)):
                    continue
            break
        else:
            continue
        owner[mask] = len(labels)
        labels.append(label)
        full_area.append(area)
        layer = _textured_layer(rng, h, w, _TEXTURES[label], period_range)
        canvas[mask] = layer[mask]

    image = _degrade(rng, canvas)
    masks = owner[None] == np.arange(len(labels))[:, None, None]
    return image, np.asarray(labels, np.int64), masks


def _degrade(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Mild blur and sensor noise, as in a photograph."""
    sigma = float(rng.uniform(0.3, 1.0))
    blurred = cv2.GaussianBlur(canvas, (0, 0), sigma)
    noisy = blurred + rng.normal(0, rng.uniform(2.0, 8.0), size=canvas.shape).astype(np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def _check_options(num_images: int, image_size: tuple[int, int], min_objects: int, max_objects: int, min_visible: float) -> None:
    if num_images < 1:
        raise InputError("num_images", f"must be at least 1, got {num_images}")
    if min(image_size) < 32:
        raise InputError("image_size", f"must be at least 32x32, got {tuple(image_size)}")
    if not 1 <= min_objects <= max_objects:
        raise InputError("min_objects/max_objects", f"need 1 <= min <= max, got {min_objects}, {max_objects}")
    if not 0.0 < min_visible <= 1.0:
        raise InputError("min_visible", f"must be in (0, 1], got {min_visible}")


def make_scenes(
    out_dir: str | Path,
    num_images: int = 200,
    seed: int = 0,
    image_size: tuple[int, int] = (128, 128),
    min_objects: int = 1,
    max_objects: int = 4,
    *,
    min_visible: float = 0.5,
    progress: bool = False,
) -> RecordSet:
    """Generate ``num_images`` scenes as ``out_dir/images/{index:05d}.png`` and return their records.

    Image ``i`` depends only on ``(seed, i)``, so any image can be regenerated alone and the same
    arguments always give byte-identical files and identical annotations. Image ids are the indices.
    """
    _check_options(num_images, image_size, min_objects, max_objects, min_visible)
    h, w = int(image_size[0]), int(image_size[1])
    image_dir = Path(out_dir) / "images"
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(image_dir, f"cannot create the output folder ({e.strerror})") from e
    records = []
    for index in tqdm(range(num_images), desc="synthetic scenes", unit="img", disable=not progress):
        rng = np.random.default_rng([seed, index])
        image, labels, masks = make_scene(rng, (h, w), min_objects, max_objects, min_visible=min_visible)
        path = image_dir / f"{index:05d}.png"
        write_png(path, image)
        gt = Instances((h, w), boxes=np.zeros((0, 4)), labels=labels, masks=mask_ops.encode_many(masks))
        records.append(ImageRecord(index, path, w, h, tags=tuple(labels.tolist()), gt=gt))
    return RecordSet(records, dict(SYNTHETIC_CLASSES), name="synthetic")
