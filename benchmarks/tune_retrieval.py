"""Choose the localisation settings of PRM's test stage (peaks per class, retrieval score, NMS) on
TRAINING images, never on coco-val50: every variant is run with the ground-truth tags (localisation
alone) on coco128 images and scored with the BENCHMARK.md metrics against their instance masks.

The training masks are used here only to compare a handful of listed settings (analysis use,
``../shared/data/README.md``); no proposal or pseudo-label is selected with them and nothing is
trained on them. The trained classifier saw these images' tags, so its maps are sharper here than on
unseen photos: the table ranks settings, its absolute numbers are not a benchmark.

Each variant is a set of ``key=value`` overrides of the run's config (``;``-separated on the command
line, one ``--variant`` per setting); the peak stage (backward passes) of each image is computed
once and cached (``--stage-cache``), the proposals once per image, so a variant costs its scoring.

    python benchmarks/tune_retrieval.py --workdir runs/prm_photos --limit 48 \
        --variant "paper=" --variant "per-class NMS=test.retrieval.class_aware_nms=true" ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, TRAIN_JSON, commit, pct
from diagnose import _apply, analyse_image, load_predictor, summarise

from wsis.data import load_dataset
from wsis.data.images import atomic_write
from wsis.eval.subsets import voc20_ids

RESULTS = ROOT / "benchmarks/results/tune_retrieval"


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    return name.strip(), [o.strip() for o in overrides.split(";") if o.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--train", type=Path, default=TRAIN_JSON, help="training images with instance masks")
    parser.add_argument("--limit", type=int, help="first N images with ground truth (by the file's order)")
    parser.add_argument("--stage-cache", type=Path)
    parser.add_argument("--cache-max-peaks", type=int, default=16)
    parser.add_argument("--variant", action="append", required=True, help="'NAME=key=value;key=value' ('NAME=': the run's config)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pred = load_predictor(args.workdir)
    base = pred.cfg
    variants = [parse_variant(v) for v in args.variant]
    configs = {name: (_apply(base, overrides) if overrides else base) for name, overrides in variants}
    data = load_dataset(args.train)
    records = [r for r in data if r.gt is not None and len(r.gt) and r.tags][: args.limit]
    thresholds = np.asarray(pred.class_thresholds(), float)
    per_variant: dict[str, list[dict]] = {name: [] for name, _ in variants}
    started = time.perf_counter()
    for i, record in enumerate(records):
        memo: dict = {}
        for name, _ in variants:
            pred.cfg = configs[name]
            per_variant[name].append(analyse_image(pred, record, thresholds, args.stage_cache, args.cache_max_peaks, memo))
        print(f"  {i + 1}/{len(records)} image {record.image_id}: {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
    subset = data.subset([r.image_id for r in records])
    cat_ids = np.asarray(pred.category_ids)
    rows = {}
    for name, overrides in variants:
        row = {"overrides": overrides}
        # synthetic scenes (the demo's) have no VOC class: all classes only
        subsets = (("all80", None), ("voc20", "voc20")) if voc20_ids(data.categories) else (("all80", None),)
        for key, sub in subsets:
            s = summarise(per_variant[name], subset, data.categories, cat_ids, thresholds, sub)
            row[key] = {"oracle": s["oracle"], "retrieval": s["retrieval"], "ceiling": s["ceiling"]}
        rows[name] = row
    result = {"command": "python benchmarks/tune_retrieval.py " + " ".join(f"'{a}'" if " " in a or ";" in a else a
                                                                        for a in sys.argv[1:]),
              "commit": commit(), "images": len(records), "seconds": time.perf_counter() - started, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2)
    text = markdown(result)
    with atomic_write(args.out.with_suffix(".md")) as f:
        f.write(text)
    print(text)


def markdown(result: dict) -> str:
    lines = [f"# Localisation settings compared on {result['images']} training images (oracle tags)", "",
             "Training images (coco128) with their ground-truth tags, scored against their instance masks "
             "(analysis use: a handful of listed settings are compared, nothing is trained on the masks). "
             "The classifier was trained on these images' tags, so the absolute numbers are optimistic; the "
             f"ranking of settings is what is used. Command: `{result['command']}` (commit {result['commit']}).", "",
             "| variant | overrides | all classes .25 / .5 / ABO | voc20 .25 / .5 / ABO | predictions | picks best | "
             "picked / best IoU | area ratio |", "|---|---|---|---|---|---|---|---|"]
    for name, row in result["rows"].items():
        a = row["all80"]["oracle"]
        v = row["voc20"]["oracle"] if "voc20" in row else {k: None for k in ("mAP_0.25", "mAP_0.5", "ABO")}
        d = row["all80"]["retrieval"]
        lines.append(f"| {name} | `{' '.join(row['overrides']) or '(run config)'}` | {pct(a['mAP_0.25'])} / "
                     f"{pct(a['mAP_0.5'])} / {pct(a['ABO'])} | {pct(v['mAP_0.25'])} / {pct(v['mAP_0.5'])} / "
                     f"{pct(v['ABO'])} | {a['n_pred']} | {pct(d['picks_best_rate'])} | {pct(d['picked_iou'])} / "
                     f"{pct(d['best_iou'])} | {d['median_area_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
