"""Why PDSL's masks come out empty on short schedules: for every trained variant of a
``bench_pdsl.py`` workdir, how strong its mask probabilities are next to its detection scores, and
what the instance metrics would be at other mask thresholds than the configured 0.5.

The correlation loss (Eqs. 6-8) pulls each class-specific mask's log-sum-exp activation towards the
detection branch's score of the proposal; while that score is low, the masks are pulled below any
fixed cut. This script measures that, per variant, from one soft prediction pass per image:

* ``empty@0.5``: share of detections (the 10 best of each image) whose mask has no pixel above 0.5;
* ``max p``: median over those detections of the mask's highest probability;
* ``score``: median detection score of the same detections;
* mAP^r@0.25 / @0.5 and ABO (VOC protocol, all classes) at each ``--thresholds`` value.

This is an analysis on the evaluation images, not a tuning step: the benchmark rows keep 0.5.

    python benchmarks/analyse_pdsl_masks.py --workdir runs/bench_pdsl_synth \
        --val runs/synth/val/annotations.json --out benchmarks/results/pdsl_masks_synthetic
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from common import ROOT, VAL_JSON, commit
from wsis.data import load_dataset
from wsis.data.images import atomic_write, load_image
from wsis.eval import evaluate
from wsis.masks import encode_many
from wsis.methods import pdsl
from wsis.methods.trained import MODEL_FILE
from wsis.methods.pdsl.inference import detect_and_segment
from wsis.structures import Instances

TOP = 10  # detections per image that enter the probability statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a bench_pdsl.py workdir")
    parser.add_argument("--variants", nargs="+", help="default: every trained variant in the workdir")
    parser.add_argument("--val", type=Path, default=VAL_JSON)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.4, 0.3, 0.2, 0.1])
    parser.add_argument("--limit", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pdsl_masks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    val = load_dataset(args.val)
    if args.limit:
        val = val.subset([r.image_id for r in val.records[: args.limit]])
    names = args.variants or sorted(p.parent.name for p in args.workdir.glob(f"*/{MODEL_FILE}"))
    result = {"commit": commit(), "workdir": str(args.workdir), "val": str(args.val), "images": len(val),
              "thresholds": args.thresholds, "variants": {}}
    for name in names:
        result["variants"][name] = analyse(pdsl.load(args.workdir / name), val, args.thresholds)
        print(name, json.dumps(result["variants"][name]["summary"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2)
    print(markdown(result))


def analyse(predictor: "pdsl.PDSLPredictor", val, thresholds: list[float]) -> dict:
    preds: dict[float, dict] = {t: {} for t in thresholds}
    max_p, scores, empty = [], [], []
    labels_of = np.asarray(predictor.category_ids, np.int64)
    for record in val:
        image = load_image(record.path)
        found = detect_and_segment(predictor.model, image, predictor.proposal_boxes(record), predictor.cfg.test,
                                   predictor.device, soft=True)
        probs = np.asarray(found.masks, np.float32)
        if len(probs):
            top = probs[:TOP].reshape(min(TOP, len(probs)), -1).max(axis=1)
            max_p += top.tolist()
            scores += found.scores[:TOP].tolist()
            empty += (top <= 0.5).tolist()
        labels = labels_of[found.classes] if len(found.classes) else np.zeros(0, np.int64)
        for t in thresholds:
            preds[t][record.image_id] = Instances(image.shape[:2], boxes=found.boxes, labels=labels,
                                                  scores=found.scores, masks=encode_many(probs > t))
    rows = {}
    for t in thresholds:
        v = evaluate(val, preds[t])["voc"]
        rows[str(t)] = {"mAP@0.25": v["mAP"]["0.25"], "mAP@0.5": v["mAP"]["0.5"], "abo": v["abo"]}
    summary = {"detections": len(max_p), "empty@0.5": float(np.mean(empty)) if empty else None,
               "median_max_p": statistics.median(max_p) if max_p else None,
               "median_score": statistics.median(scores) if scores else None}
    return {"summary": summary, "thresholds": rows}


def _f(x, pct: bool = True) -> str:
    return "-" if x is None else (f"{100 * x:.1f}" if pct else f"{x:.3f}")


def markdown(result: dict) -> str:
    ts = [str(t) for t in result["thresholds"]]
    head = "| variant | empty@0.5 % | max p | score | " + " | ".join(
        f"@0.25 / @0.5 / ABO (t={t})" for t in ts) + " |"
    lines = [head, "|" + "---|" * (4 + len(ts))]
    for name, v in result["variants"].items():
        s = v["summary"]
        cells = [f"{_f(r['mAP@0.25'])} / {_f(r['mAP@0.5'])} / {_f(r['abo'])}" for r in (v["thresholds"][t] for t in ts)]
        lines.append(f"| {name} | {_f(s['empty@0.5'])} | {_f(s['median_max_p'], False)} | "
                     f"{_f(s['median_score'], False)} | " + " | ".join(cells) + " |")
    lines.append(f"\n{result['images']} images of {result['val']}; statistics over the {TOP} best detections "
                 f"of each image; metrics: VOC protocol, all classes.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
