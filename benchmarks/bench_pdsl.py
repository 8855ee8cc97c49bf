"""PDSL benchmark (../shared/BENCHMARK.md) with the ablation rows of the paper's Table 1: trained on
the tags of coco128 + coco-train83 (211 images; ``--coco128-only`` for the rows before 2026-12-02), scored on coco-val50 with both protocols on all 80 classes and the VOC20 subset, plus
box AP@0.5 and CorLoc of the detection branch, training time and inference seconds per image
(median, including proposal generation).

Variants (each trains in ``<workdir>/<name>`` and resumes from it when interrupted):

    pdsl      n^r=4, n^m=4, L_ACL      (the full method)
    nr0       n^r=0                    (no refinement heads: WSDDN boxes)
    nm0       n^m=0                    (class-agnostic mask head only; no correlation term then)
    no_acl    without L_ACL
    base      n^r=0, n^m=0, no L_ACL   (WSDDN + class-agnostic GrabCut-trained masks)
    pdsl_rel  pdsl with loss.correlation_target=relative (not in the paper; not run by default)

Shared between variants: the proposal cache (``<workdir>/proposals``; val proposals are generated
once, timed, and written there) and the GrabCut seed masks (``<workdir>/grabcut``, per image and box).

    python benchmarks/bench_pdsl.py [--config wsis/configs/pdsl_cpu.yaml] [--workdir runs/bench_pdsl]
        [--variants pdsl nr0 nm0 no_acl base] [--train-limit N] [--limit N] [--threads N] [key=value ...]

Writes ``<out>.json`` (every metric, per-variant config and timings, commit, machine) and prints the
Markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import torch

from common import ROOT, add_data_args, commit, machine, pct, peak_rss_mib, training_records
from wsis.data import load_dataset
from wsis.data.images import atomic_write, load_image
from wsis.errors import InputError
from wsis.eval import evaluate
from wsis.methods import pdsl
from wsis.proposals import generate_proposals
from wsis.proposals.precomputed import write_npz

# Every switch of Table 1 is set explicitly: the CPU configs turn L_ACL off by default.
VARIANTS: dict[str, list[str]] = {
    "pdsl": ["loss.correlation=true"],
    "nr0": ["model.refine_heads=0", "loss.correlation=true"],
    "nm0": ["model.mask_heads=0"],
    "no_acl": ["loss.correlation=false"],
    "base": ["model.refine_heads=0", "model.mask_heads=0", "loss.correlation=false"],
    # not in Table 1: Eq. 8's detection activation relative to the class's best proposal
    "pdsl_rel": ["loss.correlation=true", "loss.correlation_target=relative"],
}


def time_proposals(records, predictor: pdsl.PDSLPredictor) -> dict[int, float]:
    """Generate every val image's proposals once (seconds per image) into the shared cache."""
    cfg = predictor.cfg.proposals
    seconds = {}
    for record in records:
        image = load_image(record.path)
        start = time.perf_counter()
        proposals = generate_proposals(image, cfg.method, **cfg.settings)
        seconds[record.image_id] = time.perf_counter() - start
        write_npz(predictor.proposal_cache.entry(record.path, cfg.method, **cfg.settings), proposals)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(parser, train_set=True)
    parser.add_argument("--config", type=Path, default=ROOT / "wsis/configs/pdsl_cpu.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/bench_pdsl")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pdsl")
    parser.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v != "pdsl_rel"],
                        choices=list(VARIANTS))
    parser.add_argument("--train-limit", type=int, help="only the first N training images (a smoke run)")
    parser.add_argument("--limit", type=int, help="only the first N validation images (a smoke run)")
    parser.add_argument("--threads", type=int, help="torch and OpenCV CPU threads (default: theirs)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)

    train = training_records(args)
    val = load_dataset(args.val)
    if args.train_limit:
        train = train.subset([r.image_id for r in train.records[: args.train_limit]])
    if args.limit:
        val = val.subset([r.image_id for r in val.records[: args.limit]])
    base = list(args.overrides) + [f"proposals.cache_dir={args.workdir / 'proposals'}",
                                   f"grabcut.cache_dir={args.workdir / 'grabcut'}"]

    runs, predictors = {}, {}
    for name in args.variants:
        overrides = base + VARIANTS[name]
        started = time.perf_counter()
        predictors[name] = pdsl.fit(train, args.config, overrides, args.workdir / name)
        meta = json.loads((args.workdir / name / "method.json").read_text())
        runs[name] = {"overrides": list(args.overrides) + VARIANTS[name], "config": meta["config"],
                      "train": {"images": len(train), "signal": meta["signal"], "steps": meta["steps"],
                                "seconds": meta["train_seconds"], "seconds_this_run": time.perf_counter() - started,
                                "grabcut_computed_last_run": meta.get("grabcut_computed_this_run")}}

    t_prop = time_proposals(val, next(iter(predictors.values())))
    for name, predictor in predictors.items():
        preds, t_pred = {}, []
        for record in val:
            image = load_image(record.path)
            start = time.perf_counter()
            preds[record.image_id] = predictor.predict(record, image)  # proposals read from the cache
            t_pred.append(time.perf_counter() - start)
            print(f"  {name} image {record.image_id}: {t_pred[-1]:.2f} s + proposals {t_prop[record.image_id]:.2f} s, "
                  f"{len(preds[record.image_id])} instances", flush=True)
        runs[name]["inference"] = {
            "median_s": statistics.median(t + t_prop[r.image_id] for t, r in zip(t_pred, val)),
            "median_s_excluding_proposals": statistics.median(t_pred), "device": str(predictor.device)}
        runs[name]["all80"] = evaluate(val, preds, detection=True)
        try:
            runs[name]["voc20"] = evaluate(val, preds, subset="voc20", detection=True)
        except InputError:  # data without VOC classes (the synthetic scenes)
            runs[name]["voc20"] = None

    result = {"method": "pdsl", "commit": commit(), "config": str(args.config), "overrides": args.overrides,
              "val_images": len(val), "median_s_proposals": statistics.median(t_prop.values()),
              "variants": runs, "peak_rss_mib": peak_rss_mib(),
              "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2, default=str)
    text = markdown(result)
    with atomic_write(args.out.with_suffix(".md")) as f:
        f.write(text + "\n")
    print(text)



def markdown(result: dict) -> str:
    lines = ["| variant | n^r | n^m | n_seed | L_ACL | classes | mAP^r@0.25 | @0.5 | @0.75 | ABO | COCO AP | AP50 | "
             "AP75 | box AP@0.5 | CorLoc | train s | s/img |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in result["variants"].items():
        m, loss = run["config"]["model"], run["config"]["loss"]
        acl = "yes" if loss["correlation"] and m["mask_heads"] > 0 else "no"
        for subset in ("all80", "voc20"):
            if run[subset] is None:
                continue
            v, c, d = run[subset]["voc"], run[subset]["coco"], run[subset]["detection"]
            lines.append(f"| {name} | {m['refine_heads']} | {m['mask_heads']} | {loss['n_seed']} | {acl} | {subset} | "
                         f"{pct(v['mAP']['0.25'])} | {pct(v['mAP']['0.5'])} | {pct(v['mAP']['0.75'])} | "
                         f"{pct(v['abo'])} | {pct(c['AP'])} | {pct(c['AP50'])} | {pct(c['AP75'])} | "
                         f"{pct(d['mAP@0.5'])} | {pct(d['corloc'])} | {run['train']['seconds']:.0f} | "
                         f"{run['inference']['median_s']:.2f} |")
    lines.append(f"\n{result['val_images']} val images; s/img = median of prediction + proposal generation "
                 f"(proposals alone {result['median_s_proposals']:.2f} s); machine: {result['machine']['platform']}, "
                 f"{result['machine']['torch_threads']} torch threads, CUDA {result['machine']['cuda']}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
