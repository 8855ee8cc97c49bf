"""Can the fully supervised reference fit at all? Mask R-CNN trained on the ground truth of a few
training images (every k-th of coco128 + coco-train83) and scored on those same images, with the
loss components (RPN objectness / box, RoI classifier / box, mask) at the start and the end of the
schedule, so that a pipeline that cannot fit shows which head does not learn. A diagnosis tool, not
a benchmark row (issue #11, deliver 4).

    python benchmarks/overfit_reference.py --images 10 --workdir runs/overfit10 [--config ...] [key=value ...]

Writes ``<out>.json`` and prints the table. Resumes from ``--workdir`` like every training run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench_reference import scores, timed_predictions
from common import ROOT, commit, load_train_set, machine, pct, peak_rss_mib
from wsis.data.images import atomic_write
from wsis.methods import maskrcnn

LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


def loss_curve(log: Path, window: int = 3) -> dict[str, list[float]]:
    """Each loss component's mean over the first and the last ``window`` logged steps."""
    steps = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [s for s in steps if s.get("event") == "step"]
    return {k: [float(np.mean([s[k] for s in steps[:window]])), float(np.mean([s[k] for s in steps[-window:]]))]
            for k in LOSSES if steps and k in steps[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "benchmarks/reference_cpu.yaml")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/overfit_reference")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/overfit_reference")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = load_train_set()
    step = max(1, len(train) // args.images)
    chosen = train.subset([r.image_id for r in train][::step][: args.images])
    started = time.perf_counter()
    if (args.workdir / "method.json").is_file():
        predictor = maskrcnn.load(args.workdir)
    else:
        predictor = maskrcnn.fit(chosen, args.config, args.overrides, args.workdir)
    train_seconds = time.perf_counter() - started
    preds, seconds = timed_predictions(predictor, chosen)
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "commit": commit(),
              "images": [r.image_id for r in chosen], "overrides": args.overrides,
              "losses_first_last": loss_curve(args.workdir / "log.jsonl"), "train_seconds_this_run": train_seconds,
              "on_train": scores(chosen, preds), "inference_median_s": float(np.median(seconds)),
              "peak_rss_mib": peak_rss_mib(), "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2)
    print("| loss | first | last |\n|---|---|---|")
    for k, (a, b) in result["losses_first_last"].items():
        print(f"| {k} | {a:.3f} | {b:.3f} |")
    for subset in ("all80", "voc20"):
        v = result["on_train"][subset]["voc"]
        print(f"{subset}: mAP^r@0.25 {pct(v['mAP']['0.25'])} @0.5 {pct(v['mAP']['0.5'])} "
              f"@0.75 {pct(v['mAP']['0.75'])} ABO {pct(v['abo'])}")


if __name__ == "__main__":
    main()
