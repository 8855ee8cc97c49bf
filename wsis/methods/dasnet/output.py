"""DASNet's semantic output: VOC-palette PNGs (pixel value = 1 + the class's position in the model's
category list, 0 background; the index -> category table is written next to them as ``classes.json``)
and the same maps as one instance per class, for the evaluator's semantic mIoU."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from wsis import masks as mask_ops
from wsis.data.images import atomic_write
from wsis.structures import Instances


def voc_palette() -> list[int]:
    """PASCAL VOC's 256-colour palette (the bit-interleaved colour map of its devkit)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def semantic_instances(label_map: np.ndarray) -> Instances:
    """(H, W) category-id map -> one mask per category present (score 1)."""
    ids = [int(c) for c in np.unique(label_map) if c != 0]
    masks = np.stack([label_map == c for c in ids]) if ids else np.zeros((0,) + label_map.shape, bool)
    return Instances(label_map.shape, labels=np.asarray(ids, np.int64), masks=mask_ops.encode_many(masks))


def write_semantic_png(path: str | Path, label_map: np.ndarray, category_ids: Sequence[int]) -> None:
    if len(category_ids) > 254:
        raise ValueError("a palette PNG holds at most 254 classes")
    lut = {int(c): i + 1 for i, c in enumerate(category_ids)}
    index = np.zeros(label_map.shape, np.uint8)
    for c in np.unique(label_map):
        if c != 0:
            index[label_map == c] = lut[int(c)]
    image = Image.fromarray(index, mode="P")
    image.putpalette(voc_palette())
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG")


def write_classes(folder: str | Path, category_ids: Sequence[int], categories: dict[int, str]) -> None:
    table = {str(i + 1): {"category_id": int(c), "name": categories.get(int(c), str(c))}
             for i, c in enumerate(category_ids)}
    with atomic_write(Path(folder) / "classes.json") as f:
        json.dump({"0": {"category_id": 0, "name": "background"}, **table}, f, indent=2)


def write_semantic_maps(predictor, records, folder: str | Path) -> None:
    """``<folder>/<image stem>.png`` (VOC palette), ``classes.json`` and ``semantic.json`` (COCO results,
    one instance per class and image: ``wsis evaluate --semantic --pred semantic.json`` scores them)."""
    from tqdm import tqdm

    from wsis.data.coco import write_coco_results
    from wsis.errors import InputError

    if not hasattr(predictor, "predict_semantic"):
        raise InputError("--semantic", "this trained method has no semantic output (dasnet has)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for record in tqdm(list(records), desc="semantic", unit="img"):
        label_map = predictor.predict_semantic(record)
        write_semantic_png(folder / f"{Path(record.file_name).stem}.png", label_map, predictor.category_ids)
        results[record.image_id] = semantic_instances(label_map)
    write_classes(folder, predictor.category_ids, predictor.categories)
    write_coco_results(results, folder / "semantic.json")
