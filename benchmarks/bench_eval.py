"""Time the VOC-protocol evaluator against pycocotools' COCOeval on a VOC-val-sized synthetic set.

Generates (seeded, in memory, nothing cached) 1,449 images of 375x500 with a few ellipse/polygon
instances of 20 classes each, VOC-style 255 bands around the objects in half of the images, and
about 5,000 predictions (perturbed ground truth with some class swaps, plus false positives,
random scores). Prints the median wall time of ``evaluate_instances`` at the 4 thresholds and of
``coco_segm_eval`` (COCOeval segm) on the same predictions.

    .venv/bin/python benchmarks/bench_eval.py [--images 1449] [--repeats 3] [--seed 0]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from wsis import masks as mask_ops
from wsis.eval.coco_protocol import coco_segm_eval
from wsis.eval.instance import evaluate_instances
from wsis.structures import ImageRecord, Instances, RecordSet

HEIGHT, WIDTH, CLASSES = 375, 500, 20


def _random_shape(rng: np.random.Generator) -> dict:
    """Parameters of an ellipse or a polygon (so a perturbed copy can be redrawn)."""
    cx, cy = rng.uniform(40, WIDTH - 40), rng.uniform(40, HEIGHT - 40)
    if rng.random() < 0.5:
        return {"kind": "ellipse", "c": (cx, cy), "axes": tuple(rng.uniform(12, 110, 2)), "angle": rng.uniform(0, 180)}
    n = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(15, 100, n)
    return {"kind": "poly", "pts": np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)}


def _perturb(shape: dict, rng: np.random.Generator) -> dict:
    shift = rng.normal(0, 8, 2)
    scale = rng.uniform(0.75, 1.25)
    if shape["kind"] == "ellipse":
        c = (shape["c"][0] + shift[0], shape["c"][1] + shift[1])
        return {**shape, "c": c, "axes": tuple(a * scale for a in shape["axes"])}
    centre = shape["pts"].mean(0)
    return {"kind": "poly", "pts": (shape["pts"] - centre) * scale + centre + shift + rng.normal(0, 4, shape["pts"].shape)}


def _draw(shape: dict) -> np.ndarray:
    canvas = np.zeros((HEIGHT, WIDTH), np.uint8)
    if shape["kind"] == "ellipse":
        centre = tuple(int(round(v)) for v in shape["c"])
        axes = tuple(max(1, int(round(v))) for v in shape["axes"])
        cv2.ellipse(canvas, centre, axes, shape["angle"], 0, 360, 1, thickness=-1)
    else:
        cv2.fillPoly(canvas, [np.round(shape["pts"]).astype(np.int32)], 1)
    return canvas.astype(bool)


def _instances(shapes: list[dict], labels: list[int], scores: list[float] | None) -> Instances:
    masks = np.stack([_draw(s) for s in shapes]) if shapes else np.zeros((0, HEIGHT, WIDTH), bool)
    return Instances((HEIGHT, WIDTH), labels=labels, scores=scores, masks=mask_ops.encode_many(masks))


def _ignore_band(gt: Instances) -> dict:
    """VOC's 255 band: a 5-px ring along every object boundary."""
    union = gt.mask_array().any(0).astype(np.uint8)
    ring = cv2.morphologyEx(union, cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8)).astype(bool)
    return mask_ops.encode(ring)


def generate(num_images: int, seed: int) -> tuple[RecordSet, dict[int, Instances]]:
    rng = np.random.default_rng(seed)
    records, preds = [], {}
    for image_id in range(1, num_images + 1):
        shapes = [_random_shape(rng) for _ in range(int(rng.integers(1, 5)))]
        labels = [int(c) for c in rng.integers(1, CLASSES + 1, len(shapes))]
        gt = _instances(shapes, labels, None)
        ignore = _ignore_band(gt) if rng.random() < 0.5 else None
        p_shapes, p_labels = [], []
        for s, c in zip(shapes, labels):
            if rng.random() < 0.85:  # found, perturbed, sometimes twice, sometimes the wrong class
                for _ in range(1 + int(rng.random() < 0.3)):
                    p_shapes.append(_perturb(s, rng))
                    p_labels.append(c if rng.random() < 0.85 else int(rng.integers(1, CLASSES + 1)))
        for _ in range(int(rng.poisson(0.7))):  # false positives anywhere
            p_shapes.append(_random_shape(rng))
            p_labels.append(int(rng.integers(1, CLASSES + 1)))
        crowd = np.zeros(len(shapes), bool)
        records.append(ImageRecord(image_id, Path(f"{image_id:06d}.jpg"), WIDTH, HEIGHT, tags=labels, gt=gt,
                                   crowd=crowd, ignore=ignore))
        preds[image_id] = _instances(p_shapes, p_labels, [float(s) for s in rng.random(len(p_shapes))])
    return RecordSet(records, {c: f"class{c}" for c in range(1, CLASSES + 1)}, "synthetic-voc"), preds


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1449)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    gt, preds = generate(args.images, args.seed)
    gen_s = time.perf_counter() - start
    n_pred = sum(len(p) for p in preds.values())
    print(f"generated {len(gt)} images, {gt.num_instances} instances, {n_pred} predictions in {gen_s:.1f} s")

    ours_s, ours = _median_time(lambda: evaluate_instances(gt, preds), args.repeats)
    coco_s, coco = _median_time(lambda: coco_segm_eval(gt, preds), args.repeats)
    rows = [
        ("evaluate_instances (4 thresholds, mAP^r + ABO)", ours_s),
        ("coco_segm_eval (pycocotools COCOeval segm)", coco_s),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'evaluator':<{width}}  median s  (of {args.repeats})")
    for name, secs in rows:
        print(f"{name:<{width}}  {secs:8.2f}")
    print(f"{'ratio COCOeval / ours':<{width}}  {coco_s / ours_s:8.2f}")
    maps = "  ".join(f"mAP^r@{t}={v:.3f}" for t, v in ours["mAP"].items())
    print(f"\nsanity: {maps}  ABO={ours['abo']:.3f}  COCO AP={coco['AP']:.3f}  AP50={coco['AP50']:.3f}")


if __name__ == "__main__":
    main()
