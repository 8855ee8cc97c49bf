"""WISE's pseudo masks alone, scored against the training images' own ground truth (the diagnosis
of issue 11: the pseudo masks are the detector's supervision): the paper's objectness-proportional
draw against the alternatives of ``pseudo.*`` (wsis/methods/wise/pseudo_labels.py): argmax, the
draw among each peak's top-k candidates, the relative peak filter, per-class NMS among the pseudo
instances, and PRM's test-stage retrieval on the image's tags. Choosing among them on the training
images is allowed (no validation image is read). Writes ``<out>.json`` and prints a Markdown table.

    python benchmarks/wise_pseudo_variants.py --config benchmarks/wise_reference_cpu.yaml \
        --workdir runs/wise3/wise [--train-limit N] [--no-retrieval] [key=value ...]

Stage 1 (PRM) and the candidate sets are trained / computed in ``--workdir`` when not cached.
Pseudo instances are scored as predictions whose score is the peak's class response (objectness
candidates) or the retrieval score (retrieval candidates).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from common import ROOT, load_train_set
from wsis import masks as mask_ops
from wsis.config import load_config
from wsis.data.images import atomic_write
from wsis.eval import evaluate
from wsis.methods import wise
from wsis.methods.wise.pseudo_labels import PseudoLabelConfig, pseudo_instances
from wsis.structures import ImageRecord, RecordSet

# (row name, candidate source, mode, filters); every filter is a PseudoLabelConfig field
VARIANTS = [
    # scored as the exported pseudo_labels.json was in wise.md (no scores: every instance 1)
    ("paper: sampled (Eq. 1), every score 1", "objectness", "sample", {"unit_scores": True}),
    ("paper: sampled (Eq. 1)", "objectness", "sample", {}),
    ("argmax objectness", "objectness", "argmax", {}),
    ("sampled among top 3", "objectness", "sample", {"top_k": 3}),
    ("argmax + class NMS 0.5", "objectness", "argmax", {"nms_threshold": 0.5}),
    ("argmax + peaks >= 0.5 max + class NMS 0.5", "objectness", "argmax",
     {"peak_relative_threshold": 0.5, "nms_threshold": 0.5}),
    ("sampled among top 3 + peaks >= 0.5 max + class NMS 0.5", "objectness", "sample",
     {"top_k": 3, "peak_relative_threshold": 0.5, "nms_threshold": 0.5}),
    ("PRM retrieval on the tags, every score 1", "retrieval", "argmax", {"unit_scores": True}),
    ("PRM retrieval on the tags", "retrieval", "argmax", {}),
    ("PRM retrieval on the tags + peaks >= 0.5 max", "retrieval", "argmax", {"peak_relative_threshold": 0.5}),
]
DRAWS = 3  # sampled rows: mean over the draws of epochs 0..DRAWS-1


def precision_recall(train: RecordSet, preds: dict, threshold: float = 0.5) -> tuple[float, float]:
    """What a detector target set is judged by (its scores are not used in training): the share of
    pseudo instances that match a ground-truth object of their class at mask IoU >= ``threshold``
    and the share of objects matched; one-to-one, greedily in score order, per image and class."""
    hits = total_pred = total_gt = 0
    for r in train:
        gt, p = r.gt, preds[r.image_id]
        total_pred, total_gt = total_pred + len(p), total_gt + len(gt)
        for c in np.unique(p.labels):
            mine = np.flatnonzero(p.labels == c)
            theirs = np.flatnonzero(gt.labels == c)
            if not len(theirs):
                continue
            iou = mask_ops.iou([p.rles()[i] for i in mine], [gt.rles()[j] for j in theirs])
            free = np.ones(len(theirs), bool)
            for a in np.argsort(-p.scores[mine], kind="stable"):
                cand = np.where(free, iou[a], -1.0)
                if cand.max() >= threshold:
                    free[cand.argmax()] = False
                    hits += 1
    return hits / max(total_pred, 1), hits / max(total_gt, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "benchmarks/wise_reference_cpu.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/wise3/wise")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/wise_pseudo_variants")
    parser.add_argument("--no-retrieval", action="store_true", help="skip the retrieval rows (no PRM back-propagation)")
    parser.add_argument("--train-limit", type=int,
                        help="only the first N training images (those whose candidate sets are cached)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    train = load_train_set()
    if args.train_limit:
        train = train.subset([r.image_id for r in train][: args.train_limit])
    tags_only = RecordSet([ImageRecord(r.image_id, r.path, r.width, r.height, tags=r.tags, file_name=r.file_name)
                           for r in train], dict(train.categories), train.name)
    cfg = load_config(wise.WiseMethodConfig, args.config, list(args.overrides))
    sources, seconds = {}, {}
    for source in ("objectness",) + (() if args.no_retrieval else ("retrieval",)):
        cfg.pseudo.candidates = source
        start = time.perf_counter()
        sources[source] = wise.make_candidates(tags_only, cfg, args.workdir)  # cached after the first run
        seconds[source] = time.perf_counter() - start
    gt_objects = sum(len(r.gt) for r in train)
    rows = []
    for name, source, mode, filters in VARIANTS:
        if source not in sources:
            continue
        unit = filters.get("unit_scores", False)
        pcfg = PseudoLabelConfig(**{**vars(cfg.pseudo), "candidates": source,
                                    **{k: v for k, v in filters.items() if k != "unit_scores"}})
        draws = range(DRAWS) if mode == "sample" else range(1)
        reports, counts, prs = [], [], []
        for epoch in draws:
            preds = {i: pseudo_instances(c, mode, cfg.seed, epoch, pcfg) for i, c in sources[source].items()}
            if unit:
                preds = {i: replace(p, scores=np.ones(len(p), np.float32)) for i, p in preds.items()}
            counts.append(sum(len(p) for p in preds.values()))
            prs.append(precision_recall(train, preds))
            reports.append({s: evaluate(train, preds, subset=None if s == "all80" else s, coco=False)
                            for s in ("all80", "voc20")})
        row = {"name": name, "candidates": source, "mode": mode, "filters": filters, "instances": counts,
               "reports": reports}
        for s in ("all80", "voc20"):
            for thr in ("0.25", "0.5", "0.7"):
                vals = [r[s]["voc"]["mAP"][thr] for r in reports]
                row[f"{s}@{thr}"] = statistics.mean(vals)
                row[f"{s}@{thr}_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row[f"{s}_abo"] = statistics.mean(r[s]["voc"]["abo"] for r in reports)
        row["precision@0.5"] = statistics.mean(x[0] for x in prs)
        row["recall@0.5"] = statistics.mean(x[1] for x in prs)
        rows.append(row)
    result = {"images": len(train), "image_ids": [r.image_id for r in train], "gt_objects": gt_objects, "config": str(args.config),
              "overrides": args.overrides, "candidate_seconds": seconds, "draws": DRAWS, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2)
    print(f"{len(train)} training images, {gt_objects} ground-truth objects; mAP^r (VOC protocol) in %, "
          f"sampled rows: mean of {DRAWS} draws\n")
    print("| pseudo masks | instances | precision@0.5 | recall@0.5 | all80 @0.25 | @0.5 | @0.7 | ABO | "
          "voc20 @0.25 | @0.5 | @0.7 | ABO |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{100 * r[f'{s}@{t}']:.1f}" for s in ("all80",) for t in ("0.25", "0.5", "0.7")]
        cells += [f"{100 * r['all80_abo']:.1f}"]
        cells += [f"{100 * r[f'voc20@{t}']:.1f}" for t in ("0.25", "0.5", "0.7")] + [f"{100 * r['voc20_abo']:.1f}"]
        print(f"| {r['name']} | {round(statistics.mean(r['instances']))} | {100 * r['precision@0.5']:.1f} | "
              f"{100 * r['recall@0.5']:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
