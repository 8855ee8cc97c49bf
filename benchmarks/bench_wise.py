"""WISE benchmark rows (../shared/BENCHMARK.md): WISE, WISE+refine and the fully supervised
reference (Mask R-CNN on the ground-truth masks, same detector and schedule), trained on coco128 +
coco-train83 (211 images; ``--coco128-only`` for the former 128),
scored on coco-val50 with both protocols on all 80 classes and the VOC20 subset, with the weak/full
ratio on mAP^r@0.5, training time and inference seconds per image (median; WISE+refine with and
without proposal generation). Writes ``<out>.json`` and prints the Markdown table.

    python benchmarks/bench_wise.py [--wise-config wsis/configs/wise_cpu.yaml]
        [--reference-config wsis/configs/maskrcnn_cpu.yaml] [--workdir runs/bench_wise] [key=value ...]

``key=value`` overrides apply to both runs when the key exists in both configs (model.*,
schedule.*, data.*, device, seed ...) and to WISE only otherwise (prm.*, pseudo.*). Both runs
resume from ``--workdir`` when interrupted; a finished one is loaded.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


from common import ROOT, add_data_args, commit, machine, pct, peak_rss_mib, training_records
from wsis.data import load_dataset
from wsis.data.images import atomic_write, load_image
from wsis.detectors.refine import refine_with_proposals
from wsis.eval import evaluate
from wsis.methods import maskrcnn, wise
from wsis.proposals import generate_proposals
from wsis.proposals.precomputed import write_npz

WISE_ONLY = ("prm.", "pseudo.")


def time_predictions(predictor, records) -> dict:
    """Plain and refined predictions with per-image seconds: detector, proposal generation, refinement."""
    plain, refined, t_det, cpu_det, t_prop, t_ref = {}, {}, [], [], [], []
    cfg = predictor.cfg.proposals
    for record in records:
        image = load_image(record.path)
        start, start_cpu = time.perf_counter(), time.thread_time()
        plain[record.image_id] = found = predictor.predict(record, image)  # refine is off here
        t_det.append(time.perf_counter() - start)
        cpu_det.append(time.thread_time() - start_cpu)
        start = time.perf_counter()
        proposals = generate_proposals(image, cfg.method, **cfg.settings)
        t_prop.append(time.perf_counter() - start)
        write_npz(predictor.proposal_cache.entry(record.path, cfg.method, **cfg.settings), proposals)
        start = time.perf_counter()
        refined[record.image_id] = refine_with_proposals(found, proposals)
        t_ref.append(time.perf_counter() - start)
    return {"plain": plain, "refined": refined,
            "median_s": statistics.median(t_det),
            # this thread's CPU time: what compares two models timed at different moments of a
            # shared machine (wall time tracks the other processes' load; see bench_detector_speed.py)
            "median_cpu_s": statistics.median(cpu_det),
            "median_s_refine_excluding_proposals": statistics.median(a + b for a, b in zip(t_det, t_ref)),
            "median_s_refine_including_proposals": statistics.median(
                a + b + c for a, b, c in zip(t_det, t_prop, t_ref))}


def scores(val, preds) -> dict:
    return {"all80": evaluate(val, preds), "voc20": evaluate(val, preds, subset="voc20")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(parser, train_set=True)
    parser.add_argument("--wise-config", type=Path, default=ROOT / "wsis/configs/wise_cpu.yaml")
    parser.add_argument("--reference-config", type=Path, default=ROOT / "wsis/configs/maskrcnn_cpu.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/bench_wise")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/wise")
    parser.add_argument("--train-limit", type=int, help="only the first N training images (a smoke run)")
    parser.add_argument("--limit", type=int, help="only the first N validation images (a smoke run)")
    parser.add_argument("--reference-result", type=Path,
                        help="bench_reference.py's json for the same reference model and validation set: its "
                             "coco-val50 scores and s/image are used instead of predicting again (no refined row)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    train = training_records(args)
    val = load_dataset(args.val)
    if args.train_limit:
        train = train.subset([r.image_id for r in train][: args.train_limit])
    if args.limit:
        val = val.subset([r.image_id for r in val][: args.limit])
    shared = [o for o in args.overrides if not o.startswith(WISE_ONLY)]
    runs = {}
    todo = [("wise", wise, args.wise_config, args.overrides)]
    if args.reference_result:
        runs["maskrcnn"] = reference_from_result(args.reference_result, val)
    else:
        todo.append(("maskrcnn", maskrcnn, args.reference_config, shared))
    for name, module, config, overrides in todo:
        workdir = args.workdir / name
        started = time.perf_counter()
        # a finished run (e.g. the reference trained by bench_reference.py into this workdir) is
        # loaded, not refitted: refitting would overwrite its recorded training time
        finished = (workdir / "method.json").is_file()
        predictor = module.load(workdir) if finished else module.fit(train, config, overrides, workdir)
        fit_seconds = time.perf_counter() - started
        predictor.refine = False
        meta = json.loads((workdir / "method.json").read_text())
        timed = time_predictions(predictor, val)
        prm_meta = workdir / "prm" / "method.json"
        runs[name] = {
            "method": name, "config": meta["config"], "overrides": overrides,
            "train": {"images": len(train), "signal": meta["signal"], "steps": meta["steps"],
                      "seconds_this_run": fit_seconds, "seconds_detector": meta.get("train_seconds"),
                      "seconds_prm": json.loads(prm_meta.read_text()).get("train_seconds") if prm_meta.is_file() else None},
            "inference": {k: v for k, v in timed.items() if k.startswith("median")},
            "plain": scores(val, timed["plain"]),
            "refined": scores(val, timed["refined"]),
        }
    result = {"commit": commit(), "command": " ".join(["bench_wise.py", *__import__("sys").argv[1:]]),
              "train_set": train.name, "val_images": len(val), "runs": runs, "peak_rss_mib": peak_rss_mib(),
              "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2)
    print(markdown(result))



def reference_from_result(path: Path, val) -> dict:
    """The reference run in the layout of ``runs[...]`` from a bench_reference.py result (which
    scored the same model on the same validation set); it has no refined predictions."""
    ref = json.loads(path.read_text())
    if ref.get("val_images") != len(val) or ref["on_val"]["all80"]["images"] != len(val):
        raise SystemExit(f"{path}: scored {ref.get('val_images')} validation images, this run has {len(val)}")
    return {"method": "maskrcnn", "config": ref["config"], "overrides": ref.get("overrides", []),
            "from": str(path), "train": {"images": ref["train"]["images"], "signal": "ground-truth masks",
                                         "steps": ref["train"]["steps"], "seconds_detector": ref["train"]["seconds"],
                                         "seconds_prm": None},
            "inference": {"median_s": ref["inference_median_s"]}, "plain": ref["on_val"], "refined": None}


def markdown(r: dict) -> str:
    lines = ["| method | classes | mAP^r@0.25 | @0.5 | @0.7 | @0.75 | ABO | COCO AP | AP50 | AP75 | weak/full @0.5 | "
             "train s | s/img |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    w, m = r["runs"]["wise"], r["runs"]["maskrcnn"]
    rows = [("WISE", w, "plain", w["inference"]["median_s"]),
            ("WISE+refine", w, "refined", w["inference"]["median_s_refine_including_proposals"]),
            ("Mask R-CNN (full supervision)", m, "plain", m["inference"]["median_s"])]
    for label, run, kind, seconds in rows:
        if run[kind] is None:
            continue
        train_s = (run["train"]["seconds_detector"] or 0) + (run["train"]["seconds_prm"] or 0)
        # the detector section is `model` since the config skeleton, `detector` in older results
        backbone = (run["config"].get("model") or run["config"]["detector"])["backbone"]
        for subset in ("all80", "voc20"):
            v, c = run[kind][subset]["voc"], run[kind][subset]["coco"]
            full = m["plain"][subset]["voc"]["mAP"]["0.5"]
            ratio = "-" if not full else f"{v['mAP']['0.5'] / full:.2f}"
            lines.append(f"| {label} ({backbone}) | {subset} | {pct(v['mAP']['0.25'])} | "
                         f"{pct(v['mAP']['0.5'])} | {pct(v['mAP']['0.7'])} | {pct(v['mAP']['0.75'])} | "
                         f"{pct(v['abo'])} | {pct(c['AP'])} | {pct(c['AP50'])} | {pct(c['AP75'])} | {ratio} | "
                         f"{train_s:.0f} | {seconds:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
