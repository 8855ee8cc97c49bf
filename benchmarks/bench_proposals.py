"""Proposal pools on coco-val50: size, speed and the ceiling they put on any method that picks from them.

For each method and image: the number of proposals, the wall time of generating them, and for
every non-crowd ground-truth instance the best IoU of any proposal (class-agnostic). Reported:
mean proposals per image, median seconds per image, ABO (mean best IoU) and recall at IoU 0.5 --
mask IoU for mask proposals, box IoU (against the instance's tight box) for every method.

    .venv/bin/python benchmarks/bench_proposals.py [--limit 10] [--methods superpixel selective_search]

Timings are single-threaded (OpenCV's pool set to one thread) unless ``--threads`` says otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from pycocotools.coco import COCO

from wsis import masks as mask_ops
from wsis.proposals import generate_proposals
from wsis.proposals.cache import read_image

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-val50"
DEFAULT_METHODS = ("superpixel", "selective_search", "selective_search+grabcut")


def load_ground_truth(root: Path, limit: int | None) -> list[tuple[Path, list[dict], np.ndarray]]:
    """(image path, non-crowd instance RLEs, their xyxy boxes) per image, ascending image id."""
    coco = COCO(str(root / "annotations" / "instances_val2017.json"))
    out = []
    for image_id in sorted(coco.getImgIds())[:limit]:
        info = coco.loadImgs(image_id)[0]
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a.get("iscrowd", 0)]
        rles = [mask_ops.compress(coco.annToRLE(a)) for a in anns]
        boxes = mask_ops.to_bbox(rles) if rles else np.zeros((0, 4), np.float32)
        out.append((root / "val2017" / info["file_name"], rles, boxes))
    return out


def evaluate(method: str, data: list, settings: dict) -> dict:
    counts, seconds, mask_best, box_best = [], [], [], []
    for path, rles, boxes in data:
        image = read_image(path)
        start = time.perf_counter()
        proposals = generate_proposals(image, method, **settings)
        seconds.append(time.perf_counter() - start)
        counts.append(len(proposals))
        if not rles:
            continue
        box_best.extend(mask_ops.box_iou(proposals.boxes, boxes).max(axis=0, initial=0.0).tolist())
        if proposals.has_masks:
            mask_best.extend(mask_ops.iou(proposals.masks, rles).max(axis=0, initial=0.0).tolist())
    result = {
        "method": method, "settings": settings, "images": len(data), "instances": len(box_best),
        "proposals_per_image": float(np.mean(counts)), "seconds_per_image_median": float(np.median(seconds)),
        "box_abo": float(np.mean(box_best)), "box_recall50": float(np.mean(np.asarray(box_best) >= 0.5)),
    }
    if mask_best:
        result["mask_abo"] = float(np.mean(mask_best))
        result["mask_recall50"] = float(np.mean(np.asarray(mask_best) >= 0.5))
    return result


def markdown(results: list[dict]) -> str:
    rows = [
        "| method | proposals / image | s / image (median) | mask ABO | mask recall@0.5 | box ABO | box recall@0.5 |",
        "|---|---|---|---|---|---|---|",
    ]
    fmt = lambda r, k: f"{r[k]:.3f}" if k in r else "-"  # noqa: E731
    for r in results:
        metrics = " | ".join(fmt(r, k) for k in ("mask_abo", "mask_recall50", "box_abo", "box_recall50"))
        rows.append(f"| {r['method']} | {r['proposals_per_image']:.0f} | {r['seconds_per_image_median']:.2f} | {metrics} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="coco-val50 folder")
    parser.add_argument("--limit", type=int, default=None, help="first N images by id (default: all)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (default 1: one core)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not (args.data / "annotations" / "instances_val2017.json").is_file():
        print(f"coco-val50 not found at {args.data} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    cv2.setNumThreads(args.threads)
    data = load_ground_truth(args.data, args.limit)
    results = []
    for method in args.methods:
        results.append(evaluate(method, data, {}))
        print(f"done: {method}", file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(f"coco-val50, {len(data)} images, {results[0]['instances']} non-crowd instances; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, OpenCV threads {args.threads}, "
          f"load average at the end {load[0]:.1f}\n")
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
