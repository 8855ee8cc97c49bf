"""WISE's Table 3 on our data: mAP^r_0.5 (both protocols in the JSON) of the pseudo masks themselves
against the training ground truth, and of WISE's predictions on the same training images (plus the
fully supervised reference's, when its workdir is given: Table 3's "Mask R-CNN + GT" row).

Pseudo masks are scored as predictions whose score is the peak's class response; rows: the
most-probable candidate per peak (argmax) and the draws of epochs 0..``--draws``-1 (mean and spread).

    python benchmarks/analyse_wise.py --workdir runs/bench_wise/wise [--config wsis/configs/wise_cpu.yaml]
        [--reference runs/bench_wise/maskrcnn] [key=value ...]

Trains (or resumes / reuses) WISE in ``--workdir`` first, with the same config and overrides.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


from common import ROOT, TRAIN_JSON
from wsis.data import load_dataset
from wsis.data.images import atomic_write
from wsis.eval import evaluate
from wsis.methods import load_trained
from wsis.methods import wise
from wsis.config import load_config
from wsis.methods.wise.pseudo_labels import pseudo_instances



def score(gt, preds) -> dict:
    report = evaluate(gt, preds)
    return {"mAP50": report["voc"]["mAP"]["0.5"], "coco_AP50": report["coco"]["AP50"], "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=TRAIN_JSON)
    parser.add_argument("--config", type=Path, default=ROOT / "wsis/configs/wise_cpu.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/bench_wise/wise")
    parser.add_argument("--reference", type=Path, help="a trained maskrcnn workdir (Table 3's Mask R-CNN + GT row)")
    parser.add_argument("--train-limit", type=int, help="only the first N training images (a smoke run)")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/wise_table3")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    train = load_dataset(args.train)
    if args.train_limit:
        train = train.subset([r.image_id for r in train][: args.train_limit])
    predictor = wise.fit(train, args.config, args.overrides, args.workdir)
    cfg = load_config(wise.WiseMethodConfig, args.config, list(args.overrides))
    candidates = wise.make_candidates(train, cfg, args.workdir)  # cached: no recomputation

    rows = {"pseudo masks (argmax)": score(train, {i: pseudo_instances(c, "argmax", cfg=cfg.pseudo)
                                                  for i, c in candidates.items()})}
    draws = [score(train, {i: pseudo_instances(c, "sample", cfg.seed, e, cfg.pseudo) for i, c in candidates.items()})
             for e in range(args.draws)]
    rows["pseudo masks (sampled, epoch 0)"] = draws[0]
    rows["WISE"] = score(train, predictor.predict_records(train))
    predictor.refine = True
    rows["WISE+refine"] = score(train, predictor.predict_records(train))
    if args.reference:
        rows["Mask R-CNN + GT"] = score(train, load_trained(args.reference).predict_records(train))
    sampled = [d["mAP50"] for d in draws]
    result = {"images": len(train), "config": str(args.config), "overrides": args.overrides,
              "sampled_mAP50_per_draw": sampled, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2)
    print(f"Table 3 analogue: {len(train)} training images of {args.train.name}, VOC-protocol mAP^r@0.5 "
          f"(COCO AP50) against their ground truth\n")
    print("| masks | mAP^r@0.5 | COCO AP50 |\n|---|---|---|")
    for name, r in rows.items():
        ap50 = "-" if r["coco_AP50"] is None else f"{100 * r['coco_AP50']:.1f}"
        print(f"| {name} | {100 * r['mAP50']:.1f} | {ap50} |")
    if len(sampled) > 1:
        print(f"\nsampled pseudo masks over {len(sampled)} draws: mean {100 * statistics.mean(sampled):.1f}, "
              f"sd {100 * statistics.stdev(sampled):.1f}")


if __name__ == "__main__":
    main()
