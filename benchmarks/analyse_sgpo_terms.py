"""SGPO's terms one at a time (the paper's Table 1, column "0"): a trained ``mser_sgpo`` workdir
scores the validation images with every Eq. 4 weight as configured, then with each of alpha
(instance-aware), beta (boundary-aware), gamma (class-aware) and omega (saliency-aware) set to 0,
and with PRM's binary background indicator as the class-irrelevant map, next to PRM's own retrieval; the networks' responses are computed once per image and shared.

    python benchmarks/analyse_sgpo_terms.py --workdir runs/bench_mser_sgpo_synth/delta30 \
        --val runs/synth/val/annotations.json [--stages 1] [--out benchmarks/results/sgpo_terms_synthetic]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from common import ROOT, VAL_JSON, commit
from wsis.data import load_dataset
from wsis.data.images import atomic_write, load_image
from wsis.eval import evaluate
from wsis.methods import load_trained

ROWS = {"PRM retrieval": None, "SGPO, all terms": {}, "alpha=0 (no instance-aware)": {"alpha": 0.0},
        "beta=0 (no boundary-aware)": {"beta": 0.0}, "gamma=0 (no class-aware)": {"gamma": 0.0},
        "omega=0 (no saliency-aware)": {"omega": 0.0},
        "class-irrelevant map binary (PRM's background indicator)": {"class_irrelevant": "binary"},
        "binary, omega=0": {"class_irrelevant": "binary", "omega": 0.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a trained mser_sgpo workdir")
    parser.add_argument("--val", type=Path, default=VAL_JSON)
    parser.add_argument("--stages", type=int, default=1, help="networks used (1: SGPO on plain PRM)")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sgpo_terms")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = load_trained(args.workdir).variant(stages=args.stages)
    val = load_dataset(args.val)
    records = list(val)[: args.limit]
    variants = {}
    for name, weights in ROWS.items():
        if weights is None:
            variants[name] = base.variant(scoring="prm")
        else:
            v = base.variant(scoring="sgpo")
            v.cfg = dataclasses.replace(v.cfg, test=dataclasses.replace(v.cfg.test, retrieval=dataclasses.replace(v.cfg.test.retrieval, **weights)))
            variants[name] = v
    preds = {name: {} for name in ROWS}
    for record in records:
        image = load_image(record.path)
        responses = base.stage_responses(base.base.prepare(image))
        for name, v in variants.items():
            preds[name][record.image_id] = v.instances(record, image, responses)
    scored = val.subset([r.image_id for r in records]) if args.limit else val
    result = {"commit": commit(), "workdir": str(args.workdir), "val": str(args.val), "stages": args.stages,
              "images": len(records), "rows": {n: evaluate(scored, p) for n, p in preds.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2, default=str)
    print(f"| scoring (T={args.stages}) | mAP^r@0.25 | @0.5 | @0.75 | ABO | ABO agnostic |\n|---|---|---|---|---|---|")
    for name, r in result["rows"].items():
        v = r["voc"]
        print(f"| {name} | {100 * v['mAP']['0.25']:.1f} | {100 * v['mAP']['0.5']:.1f} | {100 * v['mAP']['0.75']:.1f} | "
              f"{100 * v['abo']:.1f} | {100 * v['abo_agnostic']:.1f} |")


if __name__ == "__main__":
    main()
