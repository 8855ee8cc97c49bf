"""MSER + SGPO benchmark (../shared/BENCHMARK.md): ablation (paper Table 7), stages T (Table 2) and
erasing threshold delta (Table 4) on the protocol's training tags (coco128 + coco-train83; ``--coco128-only``
for the rows before 2026-12-02) -> coco-val50, both protocols, with every row's inference time per
image and the run's peak memory.

Training is shared across rows: one run with ``--stages`` (default 3) stages at the config's delta
holds the networks of T = 1, 2, 3; each other delta reuses that run's stage 1 (copied) and trains only
its own stage 2. At inference the stage networks' PRMs of an image are computed once and every row
is scored from them. A row's s/image is what its ``predict`` costs: input preparation, the PRMs of
the networks it uses and its scoring (saliency included), each timed once per image. Proposals come
from the shared cache (``$WSIS_CACHE``, keyed by image content; ``--time-proposals`` regenerates and
times them). ``--stage1-from`` takes stage 1 from a finished PRM run with the same classifier settings
(the photo recipe's stage 1 *is* ``prm_photos_cpu.yaml``'s PRM), instead of training it again.

    python benchmarks/bench_mser_sgpo.py [--config wsis/configs/mser_sgpo_cpu.yaml] [--workdir runs/bench_mser_sgpo]
        [--deltas 20 40] [--stages 3] [--limit N] [--train-limit N] [--threads N] [--stage1-from RUN] [key=value ...]

Writes ``<out>.json`` (every metric, per-row config, timings, commit) and prints one Markdown table.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from common import ROOT, add_data_args, commit, machine, pct, peak_rss_mib, training_records
from wsis.config import load_config, to_dict
from wsis.data import load_dataset
from wsis.data.images import atomic_write, load_image
from wsis.eval import evaluate
from wsis.eval.subsets import voc20_ids
from wsis.methods import mser_sgpo
from wsis.proposals import generate_proposals
from wsis.proposals.precomputed import write_npz

STAGE1_FILES = ("model.pt", "stage.json", "last.pt", "log.jsonl", "thresholds.json")
# what a PRM run must share with the MSER config for its classifier to be MSER's stage 1
STAGE1_KEYS = ("model", "data.image_size", "data.hflip", "schedule", "calibration", "seed", "test.class_threshold")


def _get(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def stage1_from_prm(prm_run: Path, cfg, target: Path) -> None:
    """Stage 1 of ``target`` = the classifier of the PRM run ``prm_run`` (weights and calibrated
    thresholds), after checking that it was trained with the MSER config's stage settings."""
    meta = json.loads((prm_run / "method.json").read_text())
    mine = to_dict(cfg)
    differ = [k for k in STAGE1_KEYS if json.dumps(_get(meta["config"], k), sort_keys=True)
              != json.dumps(_get(mine, k), sort_keys=True)]
    if meta.get("method") != "prm" or differ:
        raise SystemExit(f"{prm_run} is not this config's stage 1 (differs in {differ})")
    stage1 = target / "stage1"
    stage1.mkdir(parents=True, exist_ok=True)
    if not (stage1 / "model.pt").exists():
        shutil.copy2(prm_run / "model.pt", stage1 / "model.pt")
        with atomic_write(stage1 / "thresholds.json") as f:
            json.dump({"class_thresholds": meta.get("class_thresholds"), "calibration": meta.get("calibration"),
                       "copied_from": str(prm_run)}, f, indent=2)


def share_stage1(source: Path, target: Path) -> None:
    """Give a delta variant the main run's stage 1 (it does not depend on delta)."""
    (target / "stage1").mkdir(parents=True, exist_ok=True)
    for name in STAGE1_FILES:
        src, dst = source / "stage1" / name, target / "stage1" / name
        if src.is_file() and not dst.exists():
            shutil.copy2(src, dst)


def rows_spec(max_stages: int, delta: float, deltas: list[float]) -> list[dict]:
    """(name, run key, stages used, scoring) of every table row."""
    rows = [
        {"name": "PRM", "run": delta, "stages": 1, "scoring": "prm"},
        {"name": "PRM+MSER", "run": delta, "stages": 2, "scoring": "prm"},
        {"name": "PRM+SGPO", "run": delta, "stages": 1, "scoring": "sgpo"},
        {"name": "PRM+MSER+SGPO", "run": delta, "stages": 2, "scoring": "sgpo"},
    ]
    rows += [{"name": f"MSER+SGPO T={t}", "run": delta, "stages": t, "scoring": "sgpo"} for t in range(3, max_stages + 1)]
    rows += [{"name": f"MSER+SGPO delta={d:g}", "run": d, "stages": 2, "scoring": "sgpo"} for d in deltas]
    return [r for r in rows if r["stages"] <= max_stages]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(parser, train_set=True)
    parser.add_argument("--config", type=Path, default=ROOT / "wsis/configs/mser_sgpo_cpu.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/bench_mser_sgpo")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/mser_sgpo")
    parser.add_argument("--stages", type=int, default=3, help="largest T trained (the T=1..stages rows)")
    parser.add_argument("--deltas", type=float, nargs="*", default=[20.0, 40.0], help="delta variants besides the config's")
    parser.add_argument("--limit", type=int, help="only the first N validation images (a smoke run)")
    parser.add_argument("--train-limit", type=int, help="only the first N training images (a smoke run)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--proposal-cache", type=Path, help="proposal cache folder (default: the shared one)")
    parser.add_argument("--time-proposals", action="store_true", help="regenerate every val image's proposals, timed")
    parser.add_argument("--stage1-from", type=Path, help="a finished PRM run whose classifier is stage 1")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train = training_records(args)
    val = load_dataset(args.val)
    if args.train_limit:
        train = train.subset([r.image_id for r in train.records[: args.train_limit]])
    base = list(args.overrides) + ([f"proposals.cache_dir={args.proposal_cache}"] if args.proposal_cache else [])
    cfg = load_config(mser_sgpo.MSERSGPOConfig, args.config, base)
    delta = cfg.erasing.delta
    deltas = [d for d in args.deltas if d != delta]

    started = time.perf_counter()
    if args.stage1_from:
        stage1_from_prm(args.stage1_from, cfg, args.workdir / f"delta{delta:g}")
    runs = {delta: mser_sgpo.fit(train, args.config, base + [f"erasing.stages={args.stages}"], args.workdir / f"delta{delta:g}")}
    for d in deltas:
        share_stage1(args.workdir / f"delta{delta:g}", args.workdir / f"delta{d:g}")
        runs[d] = mser_sgpo.fit(train, args.config, base + ["erasing.stages=2", f"erasing.delta={d}"], args.workdir / f"delta{d:g}")
    fit_seconds = time.perf_counter() - started

    train_peak_rss = peak_rss_mib()
    rows = rows_spec(args.stages, delta, deltas)
    preds = {r["name"]: {} for r in rows}
    seconds = {r["name"]: [] for r in rows}
    main_run = runs[delta]
    t_prop = []
    records = list(val)[: args.limit]
    for record in records:
        image = load_image(record.path)
        cfg = main_run.cfg.proposals
        entry = main_run.base.proposal_cache.entry(record.path, cfg.method, **cfg.settings)
        if args.time_proposals or not entry.is_file():
            tick = time.perf_counter()
            write_npz(entry, generate_proposals(image, cfg.method, **cfg.settings))
            t_prop.append(time.perf_counter() - tick)
        # every row from one set of stage responses per run, each network's timed once
        tick = time.perf_counter()
        x = main_run.base.prepare(image)
        t_prepare = time.perf_counter() - tick
        per_stage, t_stage = [], []
        for t in range(1, args.stages + 1):
            tick = time.perf_counter()
            per_stage += main_run.variant(stages=t).stage_responses(x, skip=t - 1)
            t_stage.append(time.perf_counter() - tick)
        responses = {delta: per_stage}
        t_delta = {delta: t_stage}
        for d in deltas:
            tick = time.perf_counter()
            responses[d] = per_stage[:1] + runs[d].variant(stages=2).stage_responses(x, skip=1)
            t_delta[d] = t_stage[:1] + [time.perf_counter() - tick]
        for r in rows:
            variant = runs[r["run"]].variant(stages=r["stages"], scoring=r["scoring"])
            tick = time.perf_counter()
            preds[r["name"]][record.image_id] = variant.instances(record, image, responses[r["run"]])
            seconds[r["name"]].append(t_prepare + sum(t_delta[r["run"]][: r["stages"]]) + time.perf_counter() - tick)
        print(f"  image {record.image_id}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()), flush=True)

    scored = val.subset([r.image_id for r in records]) if args.limit else val
    result = {
        "method": "mser_sgpo", "commit": commit(), "config": str(args.config), "overrides": args.overrides,
        "train": {"images": len(train), "signal": "image-level tags", "seconds_this_run": fit_seconds},
        "speed": {"images": len(records), "device": str(main_run.device),
                  "median_s_proposals": statistics.median(t_prop) if t_prop else None,
                  "proposals_generated": len(t_prop),
                  "image_size": main_run.cfg.data.image_size, "peak_backprop": main_run.cfg.test.peak_backprop},
        "peak_rss_mib": {"after_training": train_peak_rss, "run": peak_rss_mib()},
        "train_set": train.name, "stage1_from": str(args.stage1_from) if args.stage1_from else None,
        "machine": machine(),
        "rows": [{**r, "delta": r["run"], "median_s_per_image": statistics.median(seconds[r["name"]]),
                  "all80": evaluate(scored, preds[r["name"]]),
                  "voc20": voc20(scored, preds[r["name"]])} for r in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2, default=str)
    print(markdown_table(result))


def voc20(gt, preds) -> dict | None:
    """The VOC20-subset report, or None for data without VOC classes (e.g. synthetic scenes)."""
    if not voc20_ids(gt.categories):
        return None
    return evaluate(gt, preds, subset="voc20")


def markdown_table(result: dict) -> str:
    lines = ["| model | T | delta | scoring | classes | mAP^r@0.25 | @0.5 | @0.75 | ABO | COCO AP | AP50 | AP75 | s/image |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for name in ("all80", "voc20"):
            if row[name] is None:
                continue
            v, c = row[name]["voc"], row[name]["coco"]
            lines.append(f"| {row['name']} | {row['stages']} | {row['delta']:g} | {row['scoring']} | {name} | "
                         f"{pct(v['mAP']['0.25'])} | {pct(v['mAP']['0.5'])} | {pct(v['mAP']['0.75'])} | "
                         f"{pct(v['abo'])} | {pct(c['AP'])} | {pct(c['AP50'])} | {pct(c['AP75'])} | "
                         f"{row['median_s_per_image']:.2f} |")
    s, m = result["speed"], result["peak_rss_mib"]
    proposals = (f"proposal generation {s['median_s_proposals']:.2f} s/image ({s['proposals_generated']} generated)"
                 if s["median_s_proposals"] is not None else "proposals all from the cache")
    lines.append(f"\ns/image: median over {s['images']} images on {s['device']}, proposals cached; {proposals}. "
                 f"Peak RSS: {m['after_training']:.0f} MiB after training, {m['run']:.0f} MiB for the whole run.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
