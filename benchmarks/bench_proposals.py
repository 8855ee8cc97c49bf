"""Proposal pools: size, speed and the ceiling they put on any method that picks from them.

For each pool and image: the number of proposals, the wall time of generating them, and for every
non-crowd ground-truth instance the best IoU of any proposal (class-agnostic). Reported: mean
proposals per image, median seconds per image, ABO (mean best IoU) and recall at IoU 0.5 -- mask
IoU for mask proposals, box IoU (against the instance's tight box) for every method -- plus ABO
and recall of the instances of at least 32 x 32 pixels (COCO's medium + large).

    python benchmarks/bench_proposals.py [--split val|train] [--pools superpixel ucm ...] [--limit N]
        [--hed-cache DIR]

``--split val``: coco-val50 (the dev set). ``--split train``: the images the UCM settings and
ranker were chosen on (coco128 images 0-39 and coco-train83 images 0-19 by id) -- training-set
numbers, labelled as such. Pools are named presets (``POOLS``) or plain generator names.
With ``--hed-cache`` HED maps are read from / written to that folder (by image content), and the
s/image of the HED pools then exclude the network; the network's own time is measured on
``--time-hed`` images and reported in its own row. Timings are single-threaded (OpenCV and torch
set to one thread). Results go to ``benchmarks/results/proposals[_train].{md,json}`` with the command.
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
import torch
from pycocotools.coco import COCO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, commit  # noqa: E402

from wsis import masks as mask_ops  # noqa: E402
from wsis.proposals import generate_proposals  # noqa: E402
from wsis.proposals.cache import read_image  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SPLITS = {
    "val": [("coco-val50/annotations/instances_val2017.json", "coco-val50/val2017", None)],
    "train": [("coco128/annotations/instances_train2017.json", "coco128/train2017", 40),
              ("coco-train83/annotations/instances_train83.json", "coco-train83/train83", 20)],
}
# name -> (generator, settings)
POOLS: dict[str, tuple[str, dict]] = {
    "superpixel": ("superpixel", {}),
    "ucm-sobel": ("ucm", {"boundary": "sobel"}),
    "ucm-hed-learned": ("ucm", {"ranking": "learned"}),
    "ucm-hed": ("ucm", {}),
    "ucm+superpixel": ("ucm+superpixel", {}),
    # MCG's multi-scale hierarchies: HED on the image at 0.5x / 1x / 2x, aligned; one hierarchy on
    # the mean map, or one per scale pooled by relative rank (wsis.proposals.ucm.ucm_proposals)
    "ucm-ms-mean": ("ucm", {"scales": [0.5, 1.0, 2.0], "scale_combine": "mean"}),
    "ucm-ms-pool": ("ucm", {"scales": [0.5, 1.0, 2.0], "scale_combine": "pool"}),
    "ucm-ms-mean+superpixel": ("ucm+superpixel", {"ucm": {"scales": [0.5, 1.0, 2.0], "scale_combine": "mean"}}),
    "ucm-ms-pool+superpixel": ("ucm+superpixel", {"ucm": {"scales": [0.5, 1.0, 2.0], "scale_combine": "pool"}}),
    "selective_search": ("selective_search", {}),
    "selective_search+grabcut": ("selective_search+grabcut", {}),
}
DEFAULT_POOLS = ("superpixel", "ucm-sobel", "ucm-hed", "ucm+superpixel")


def load_ground_truth(split: str, limit: int | None) -> list[tuple[Path, list[dict], np.ndarray]]:
    """(image path, non-crowd instance RLEs, their xyxy boxes) per image, ascending image id."""
    out = []
    for ann, folder, count in SPLITS[split]:
        coco = COCO(str(DATA / ann))
        for image_id in sorted(coco.getImgIds())[:count]:
            info = coco.loadImgs(image_id)[0]
            anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a.get("iscrowd", 0)]
            rles = [mask_ops.compress(coco.annToRLE(a)) for a in anns]
            boxes = mask_ops.to_bbox(rles) if rles else np.zeros((0, 4), np.float32)
            out.append((DATA / folder / info["file_name"], rles, boxes))
    return out[:limit]


def with_cache(method: str, settings: dict, cache: Path | None) -> dict:
    """Settings with the HED map cache folder added where the generator runs HED."""
    if cache is None:
        return settings
    if method == "ucm" and settings.get("boundary", "hed") == "hed":
        return {**settings, "boundary_cache": str(cache)}
    if method == "ucm+superpixel":
        return {**settings, "ucm": {**settings.get("ucm", {}), "boundary_cache": str(cache)}}
    return settings


def evaluate(name: str, data: list, cache: Path | None) -> dict:
    method, settings = POOLS.get(name, (name, {}))
    run_settings = with_cache(method, settings, cache)
    counts, seconds, mask_best, box_best, areas = [], [], [], [], []
    for path, rles, boxes in data:
        image = read_image(path)
        start = time.perf_counter()
        proposals = generate_proposals(image, method, **run_settings)
        seconds.append(time.perf_counter() - start)
        counts.append(len(proposals))
        if not rles:
            continue
        areas.extend(mask_ops.area(rles).tolist())
        box_best.extend(mask_ops.box_iou(proposals.boxes, boxes).max(axis=0, initial=0.0).tolist())
        if proposals.has_masks:
            mask_best.extend(mask_ops.iou(proposals.masks, rles).max(axis=0, initial=0.0).tolist())
    large = np.asarray(areas) >= 32 * 32
    result = {
        "pool": name, "method": method, "settings": settings, "images": len(data), "instances": len(box_best),
        "proposals_per_image": float(np.mean(counts)), "seconds_per_image_median": float(np.median(seconds)),
        "box_abo": float(np.mean(box_best)), "box_recall50": float(np.mean(np.asarray(box_best) >= 0.5)),
    }
    if mask_best:
        best = np.asarray(mask_best)
        result.update(mask_abo=float(best.mean()), mask_recall50=float(np.mean(best >= 0.5)),
                      mask_abo_32px=float(best[large].mean()), mask_recall50_32px=float(np.mean(best[large] >= 0.5)),
                      instances_32px=int(large.sum()))
    return result


def time_hed(data: list, count: int) -> dict:
    """Seconds per image of the HED network alone (no cache), median over ``count`` images."""
    from wsis.cues.hed import HEDBoundaries

    hed = HEDBoundaries()
    hed(read_image(data[0][0]))  # loads the weights outside the timing
    seconds = []
    for path, _, _ in data[:count]:
        image = read_image(path)
        start = time.perf_counter()
        hed(image)
        seconds.append(time.perf_counter() - start)
    return {"pool": "HED network alone", "images": len(seconds), "seconds_per_image_median": float(np.median(seconds))}


def markdown(results: list[dict]) -> str:
    rows = [
        "| pool | proposals / image | s / image (median) | mask ABO | mask recall@0.5 | ABO >= 32 px | recall@0.5 >= 32 px | box ABO | box recall@0.5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda r, k: f"{r[k]:.3f}" if k in r else "-"  # noqa: E731
    keys = ("mask_abo", "mask_recall50", "mask_abo_32px", "mask_recall50_32px", "box_abo", "box_recall50")
    for r in results:
        count = f"{r['proposals_per_image']:.0f}" if "proposals_per_image" in r else "-"
        rows.append(f"| {r['pool']} | {count} | {r['seconds_per_image_median']:.2f} | "
                    + " | ".join(fmt(r, k) for k in keys) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=sorted(SPLITS), default="val")
    parser.add_argument("--limit", type=int, default=None, help="first N images (default: all of the split)")
    parser.add_argument("--pools", nargs="+", default=list(DEFAULT_POOLS),
                        help=f"presets {sorted(POOLS)} or generator names")
    parser.add_argument("--hed-cache", type=Path, default=None, help="HED map cache folder")
    parser.add_argument("--time-hed", type=int, default=5, help="images to time the HED network on (0: skip)")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV/torch threads (default 1: one core)")
    parser.add_argument("--out", type=Path, default=None, help="results stem (default results/proposals[_train])")
    args = parser.parse_args(argv)
    for ann, _, _ in SPLITS[args.split]:
        if not (DATA / ann).is_file():
            print(f"{DATA / ann} not found (see ../shared/data/README.md)", file=sys.stderr)
            return 2
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    data = load_ground_truth(args.split, args.limit)
    results = []
    for name in args.pools:
        results.append(evaluate(name, data, args.hed_cache))
        print(f"done: {name}", file=sys.stderr, flush=True)
    if args.time_hed:
        results.append(time_hed(data, args.time_hed))
    load = os.getloadavg()
    label = ("coco-val50" if args.split == "val" else
             f"TRAINING images (the first {len(data)} of coco128 0-39 then coco-train83 0-19: the tuning set, "
             "not a benchmark)")
    command = "python benchmarks/bench_proposals.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"{label}, {len(data)} images, {results[0]['instances']} non-crowd instances "
              f"({results[0].get('instances_32px', '-')} of >= 32x32 px); commit {commit()}; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s), "
              f"load average at the end {load[0]:.1f} (shared machine: timings are upper bounds). "
              f"Command: `{command}`")
    text = header + "\n\n" + markdown(results)
    print(text)
    out = args.out or RESULTS / ("proposals" if args.split == "val" else "proposals_train")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "commit": commit(), "split": args.split,
                                                    "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
