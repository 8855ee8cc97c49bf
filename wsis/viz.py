"""Overlays of instances on images, and an HTML index page to browse them.

:func:`draw_instances` paints masks, contours, boxes and "name score" labels on one image;
:func:`write_overlays` does it for a dataset (ground truth, predictions, or both side by side) and
writes ``index.html``, a thumbnail grid linking to the full-size PNGs.
"""
from __future__ import annotations

import html
import math
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from wsis.data.images import atomic_write, load_image, write_png
from wsis.errors import InputError
from wsis.structures import ImageRecord, Instances

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_MIN_OVERLAY_SIDE = 384  # small images (the 128 px demo scenes) are enlarged so labels stay legible
_GOLDEN = 0.6180339887


def instance_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 RGB colours, distinct for neighbouring indices and the same on every call.

    Hues step by the golden ratio, so any run of consecutive instances gets well-separated hues.
    """
    hue = (np.arange(n) * _GOLDEN % 1.0 * 180).astype(np.uint8)
    sat = np.where(np.arange(n) % 2 == 0, 220, 170).astype(np.uint8)
    hsv = np.stack([hue, sat, np.full(n, 255, np.uint8)], axis=1)[:, None, :]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[:, 0, :]


def _label_text(name: str, score: float, show_score: bool) -> str:
    text = f"{name} {score:.2f}" if show_score else name
    # OpenCV's Hershey fonts draw ASCII only.
    return text.encode("ascii", "replace").decode("ascii")


def _draw_label(canvas: np.ndarray, text: str, anchor: tuple[int, int], colour: np.ndarray, scale: float) -> None:
    """Text on a filled box of the instance colour, above ``anchor`` (inside the image)."""
    h, w = canvas.shape[:2]
    thickness = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = max(1, round(2 * scale))
    x0 = int(np.clip(anchor[0], 0, max(0, w - tw - 2 * pad)))
    y1 = anchor[1]
    if y1 - th - base - 2 * pad < 0:  # no room above the box: put the label just inside it
        y1 = min(h, anchor[1] + th + base + 2 * pad)
    y0 = y1 - th - base - 2 * pad
    cv2.rectangle(canvas, (x0, y0), (x0 + tw + 2 * pad, y1), colour.tolist(), thickness=-1)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(canvas, text, (x0 + pad, y1 - base - pad), _FONT, scale, ink, thickness, cv2.LINE_AA)


def draw_instances(
    image: np.ndarray,
    instances: Instances,
    categories: dict[int, str],
    *,
    show_scores: bool = True,
    alpha: float = 0.5,
) -> np.ndarray:
    """RGB uint8 overlay: masks filled at ``alpha``, contours, boxes and "name 0.87" labels.

    Instance ``i`` always gets colour ``instance_colours(n)[i]``. Instances are painted from the
    lowest score up so the most confident ones end on top. Instances without masks get a box and label.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_instances: expected an (H, W, 3) image, got shape {image.shape}")
    if tuple(image.shape[:2]) != instances.image_size:
        raise ValueError(f"draw_instances: image of size {image.shape[:2]} but instances of {instances.image_size}")
    canvas = image.astype(np.uint8, copy=True)
    n = len(instances)
    if n == 0:
        return canvas
    colours = instance_colours(n)
    masks = instances.mask_array() if instances.has_masks else None
    order = np.argsort(instances.scores, kind="stable")

    if masks is not None:
        # Fill all masks in one blend: the top-most (last painted) instance owns each pixel.
        owner = np.full(instances.image_size, -1, np.int64)
        for i in order:
            owner[masks[i]] = i
        inside = owner >= 0
        blended = (1 - alpha) * canvas[inside] + alpha * colours[owner[inside]].astype(np.float64)
        canvas[inside] = np.round(blended).astype(np.uint8)

    side = min(instances.image_size)
    line = max(1, round(side / 300))
    scale = float(np.clip(side / 900, 0.35, 1.0))
    for i in order:
        colour = colours[i].tolist()
        if masks is not None:
            contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, colour, line)
        x0, y0, x1, y1 = np.round(instances.boxes[i]).astype(int)
        cv2.rectangle(canvas, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), colour, line)
    for i in order:  # labels last so no mask or box hides one
        name = categories.get(int(instances.labels[i]), str(int(instances.labels[i])))
        text = _label_text(name, float(instances.scores[i]), show_scores)
        x0, y0 = np.round(instances.boxes[i, :2]).astype(int)
        _draw_label(canvas, text, (int(x0), int(y0)), colours[i], scale)
    return canvas


def _enlarge(image: np.ndarray, instances: Instances, factor: int) -> tuple[np.ndarray, Instances]:
    """Nearest-neighbour enlargement of an image and its instances by an integer factor."""
    if factor == 1:
        return image, instances
    big = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    h, w = instances.image_size
    masks = None
    if instances.has_masks:
        masks = np.repeat(np.repeat(instances.mask_array(), factor, axis=1), factor, axis=2)
    return big, Instances((h * factor, w * factor), instances.boxes * factor, instances.labels, instances.scores, masks)


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    bar = np.full((22, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (4, 16), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def _shown(instances: Instances | None, record: ImageRecord, threshold: float, is_gt: bool) -> Instances:
    if instances is None:
        return Instances(record.size)
    keep = ~record.crowd if is_gt else instances.scores >= threshold
    return instances.select(np.flatnonzero(keep))


def _index_html(entries: list[tuple[str, str, int, list[str]]], title: str) -> str:
    """The thumbnail grid: (png name, image file name, instance count, class names) per image."""
    cards = []
    for png, file_name, count, names in entries:
        png_q = html.escape(png, quote=True)
        classes = html.escape(", ".join(names)) if names else "&mdash;"
        cards.append(
            f'<figure><a href="{png_q}"><img src="{png_q}" loading="lazy" alt="{html.escape(file_name, quote=True)}"></a>'
            f"<figcaption><b>{html.escape(file_name)}</b><br>{count} instance{'s' if count != 1 else ''}"
            f"<br>{classes}</figcaption></figure>"
        )
    style = (
        "body{font-family:sans-serif;margin:1em}"
        ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}"
        "figure{margin:0}img{width:100%;height:auto;border:1px solid #ccc}"
        "figcaption{font-size:13px;word-break:break-all}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head>\n<body><h1>{html.escape(title)}</h1><p>{len(entries)} images</p>\n"
        f'<div class="grid">\n' + "\n".join(cards) + "\n</div></body></html>\n"
    )


def write_overlays(
    records: Sequence[ImageRecord],
    out_dir: str | Path,
    *,
    predictions: dict[int, Instances] | None = None,
    categories: dict[int, str],
    max_images: int | None = None,
    score_threshold: float = 0.0,
    side_by_side: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``out_dir/{image_id}.png`` per image and ``out_dir/index.html``; return the index path.

    Draws the ground truth (crowd regions left out) when ``predictions`` is None, else the
    predictions scoring at least ``score_threshold``; ``side_by_side`` puts both next to each other.
    Images smaller than 384 px are enlarged (nearest neighbour) so that labels stay readable.
    The pages are written to a temporary folder that replaces ``out_dir`` only when every image
    was drawn: an unreadable image leaves ``out_dir`` as it was.
    """
    if side_by_side and predictions is None:
        raise InputError("side_by_side", "needs predictions to compare with the ground truth")
    if max_images is not None and max_images < 1:
        raise InputError("max_images", f"must be at least 1, got {max_images}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    with _folder_swap(out_dir) as tmp:
        _write_pages(list(records)[:max_images], tmp, predictions, categories, score_threshold, side_by_side, progress)
    return out_dir / "index.html"


@contextmanager
def _folder_swap(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` that replaces it in one rename when the body succeeds;
    on failure it is removed and ``out_dir`` is left as it was (never half-written)."""
    tag = uuid.uuid4().hex[:8]
    tmp = out_dir.parent / f".{out_dir.name}.{tag}.tmp"
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise InputError(out_dir, f"cannot create the output folder ({e.strerror})") from e
    try:
        yield tmp
        old = out_dir.parent / f".{out_dir.name}.{tag}.old"
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_pages(chosen: list[ImageRecord], out_dir: Path, predictions: dict[int, Instances] | None,
                 categories: dict[int, str], score_threshold: float, side_by_side: bool, progress: bool) -> None:
    entries = []
    for record in tqdm(chosen, desc="overlays", unit="img", disable=not progress):
        image = load_image(record.path)
        if image.shape[:2] != record.size:
            raise InputError(record.path, f"image is {image.shape[1]}x{image.shape[0]} but its annotations say "
                                          f"{record.width}x{record.height}")
        factor = max(1, math.ceil(_MIN_OVERLAY_SIDE / max(record.size)))
        gt = _shown(record.gt, record, score_threshold, is_gt=True)
        pred = None if predictions is None else _shown(predictions.get(record.image_id), record, score_threshold, False)
        views = [] if pred is not None and not side_by_side else [(gt, "ground truth", False)]
        if pred is not None:
            views.append((pred, "predictions", True))
        panels = []
        for instances, title, scores in views:
            big, big_inst = _enlarge(image, instances, factor)
            panel = draw_instances(big, big_inst, categories, show_scores=scores)
            panels.append(_titled(panel, title) if side_by_side else panel)
        if len(panels) == 2:
            gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
            panels = [np.hstack([panels[0], gap, panels[1]])]
        png = f"{record.image_id}.png"
        write_png(out_dir / png, panels[0])
        shown = pred if pred is not None else gt
        names = sorted({categories.get(int(c), str(int(c))) for c in shown.labels})
        entries.append((png, record.file_name, len(shown), names))
    title = "predictions" if predictions is not None else "ground truth"
    with atomic_write(out_dir / "index.html") as f:
        f.write(_index_html(entries, f"wsis overlays: {title}"))
