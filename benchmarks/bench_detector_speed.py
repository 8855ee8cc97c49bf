"""Inference seconds per image of trained Mask R-CNN detectors, stage by stage, timed fairly on a
shared machine: the models take turns on every image (so a load spike from other processes falls
on all of them alike) and every stage is timed both by the wall clock and by this thread's CPU
time (which other processes' load hardly changes). Also counts the detections that reach the mask
head. Writes ``<out>.json`` and ``<out>.md``.

    python benchmarks/bench_detector_speed.py --model wise=runs/bench_wise/wise \\
        --model reference=runs/bench_wise/maskrcnn [--limit 20] [--out benchmarks/results/detector_speed]

``--model label=workdir:key=value,...`` applies detector overrides to that entry only (e.g.
``flat=runs/x:score_threshold=0.0`` to see what 100 detections per image cost).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
from common import ROOT, VAL_JSON, commit, peak_rss_mib

from wsis.data import load_dataset
from wsis.data.images import atomic_write, load_image
from wsis.detectors.maskrcnn import StageTimer, predict_instances
from wsis.methods import load_trained


def parse_model(spec: str) -> tuple[str, Path, dict]:
    label, _, rest = spec.partition("=")
    workdir, _, settings = rest.partition(":")
    overrides = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = float(value)
    return label, Path(workdir), overrides


def load(workdir: Path, overrides: dict):
    predictor = load_trained(workdir)  # Mask R-CNN or WISE: the same DetectorPredictor
    heads = predictor.model.roi_heads
    for key, value in overrides.items():
        if key == "score_threshold":
            heads.score_thresh = value
        elif key == "detections_per_image":
            heads.detections_per_img = int(value)
        else:
            raise SystemExit(f"--model: only score_threshold and detections_per_image can be overridden, not {key}")
    return predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="label=workdir[:key=value,...]")
    parser.add_argument("--val", type=Path, default=VAL_JSON)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/detector_speed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {label: (load(workdir, ov), str(workdir), ov) for label, workdir, ov in map(parse_model, args.model)}
    records = load_dataset(args.val).records[: args.limit]
    per_image: dict[str, list[StageTimer]] = {label: [] for label in models}
    for i, record in enumerate(records):
        image = load_image(record.path)
        order = list(models) if i % 2 == 0 else list(reversed(models))  # alternate who goes first
        for label in order:
            predictor = models[label][0]
            timer = StageTimer()
            predict_instances(predictor.model, image, predictor.labels, predictor.device,
                              predictor.cfg.test.mask_threshold, timer)
            per_image[label].append(timer)
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "commit": commit(),
              "images": len(records), "peak_rss_mib": peak_rss_mib(),
              "machine": {"torch_threads": torch.get_num_threads(), "platform": platform.platform()},
              "models": {}}
    for label, timers in per_image.items():
        stats = {}
        for clock in ("wall", "cpu"):
            totals = [sum(getattr(t, clock).values()) for t in timers]
            stats[clock] = {"median_total_s": statistics.median(totals),
                            "median_stage_s": {s: statistics.median(getattr(t, clock).get(s, 0.0) for t in timers)
                                               for s in StageTimer.STAGES}}
        stats["detections_per_image"] = statistics.mean(t.counts["detections"] for t in timers)
        result["models"][label] = {"workdir": models[label][1], "overrides": models[label][2], **stats}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2)
    text = markdown(result)
    with atomic_write(args.out.with_suffix(".md")) as f:
        f.write(f"    python benchmarks/{result['command']}\n\n{text}\n")
    print(text)


def markdown(r: dict) -> str:
    stages = StageTimer.STAGES
    lines = ["| model | clock | total s/img | " + " | ".join(stages) + " | detections/img |",
             "|---|---|---|" + "---|" * len(stages) + "---|"]
    for label, m in r["models"].items():
        for clock in ("cpu", "wall"):
            s = m[clock]
            lines.append(f"| {label} | {clock} | {s['median_total_s']:.2f} | "
                         + " | ".join(f"{s['median_stage_s'][k]:.3f}" for k in stages)
                         + f" | {m['detections_per_image']:.1f} |")
    lines.append(f"\nMedians over {r['images']} coco-val50 images (a total's median is not the sum of the "
                 f"stage medians); 1 torch thread; peak RSS {r['peak_rss_mib']:.0f} MiB.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
