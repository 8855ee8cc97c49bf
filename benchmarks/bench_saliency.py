"""Saliency maps against the union of ground-truth objects (an analysis, not a benchmark number).

Per image of coco-val50: the map thresholded at ``--threshold`` (maps are min-max normalised to
[0, 1]) is compared with the union of all annotated objects (crowd regions included: they are
objects too); reported is the mean foreground IoU over the images, and the median seconds per image.

    python benchmarks/bench_saliency.py [--methods spectral_residual u2netp] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from pycocotools.coco import COCO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import VAL_JSON, commit  # noqa: E402

from wsis.cues.saliency import get_saliency  # noqa: E402
from wsis.proposals.cache import read_image  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def foreground_union(coco: COCO, image_id: int) -> np.ndarray:
    info = coco.loadImgs(image_id)[0]
    union = np.zeros((info["height"], info["width"]), bool)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
        union |= coco.annToMask(ann).astype(bool)
    return union


def evaluate(method: str, coco: COCO, image_root: Path, ids: list[int], threshold: float) -> dict:
    model = get_saliency(method)
    ious, seconds = [], []
    for image_id in ids:
        path = image_root / coco.loadImgs(image_id)[0]["file_name"]
        image = read_image(path)
        start = time.perf_counter()
        saliency = model(image, path)
        seconds.append(time.perf_counter() - start)
        fg = saliency >= threshold
        gt = foreground_union(coco, image_id)
        union = (fg | gt).sum()
        ious.append(float((fg & gt).sum() / union) if union else 1.0)
    return {"method": method, "images": len(ids), "threshold": threshold,
            "foreground_iou_mean": float(np.mean(ious)), "seconds_per_image_median": float(np.median(seconds)),
            "per_image": dict(zip(map(str, ids), ious))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val", type=Path, default=VAL_JSON)
    parser.add_argument("--methods", nargs="+", default=["spectral_residual", "fine_grained", "u2netp"])
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "saliency")
    args = parser.parse_args(argv)
    if not args.val.is_file():
        print(f"{args.val} not found (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    coco = COCO(str(args.val))
    ids = sorted(coco.getImgIds())[:args.limit]
    image_root = args.val.parent.parent / "val2017"
    results = [evaluate(m, coco, image_root, ids, args.threshold) for m in args.methods]
    lines = [f"Saliency on {args.val.parent.parent.name}, {len(ids)} images: foreground IoU of map >= "
             f"{args.threshold} against the union of annotated objects (analysis). Commit {commit()}; command: "
             f"`python benchmarks/bench_saliency.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
             "", "| saliency | mean foreground IoU | s / image (median, 1 thread) |", "|---|---|---|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['foreground_iou_mean']:.3f} | {r['seconds_per_image_median']:.2f} |")
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
