"""MSER + SGPO benchmark (../shared/BENCHMARK.md): ablation (paper Table 7), stages T (Table 2) and
erasing threshold delta (Table 4) on coco128 tags -> coco-val50, both protocols, plus the speed of
T=2 MSER+SGPO against single-network PRM in the same run.

Training is shared across rows: one run with ``--stages`` (default 3) stages at the config's delta
holds the networks of T = 1, 2, 3; each other delta reuses that run's stage 1 (copied) and trains only
its own stage 2. At inference the stage networks' PRMs of an image are computed once and every row
is scored from them; proposals are generated once per image (timed) and cached.

    python benchmarks/bench_mser_sgpo.py [--config wsis/configs/mser_sgpo_cpu.yaml] [--workdir runs/bench_mser_sgpo]
        [--deltas 20 40] [--stages 3] [--limit N] [--train-limit N] [--threads N] [key=value ...]

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

from common import ROOT, add_data_args, commit, machine, pct
from wsis.config import load_config
from wsis.data import load_dataset
from wsis.data.images import atomic_write, load_image
from wsis.eval import evaluate
from wsis.eval.subsets import voc20_ids
from wsis.methods import mser_sgpo
from wsis.proposals import generate_proposals
from wsis.proposals.precomputed import write_npz

STAGE1_FILES = ("model.pt", "stage.json", "last.pt", "log.jsonl")


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
    add_data_args(parser)
    parser.add_argument("--config", type=Path, default=ROOT / "wsis/configs/mser_sgpo_cpu.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/bench_mser_sgpo")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/mser_sgpo")
    parser.add_argument("--stages", type=int, default=3, help="largest T trained (the T=1..stages rows)")
    parser.add_argument("--deltas", type=float, nargs="*", default=[20.0, 40.0], help="delta variants besides the config's")
    parser.add_argument("--limit", type=int, help="only the first N validation images (a smoke run)")
    parser.add_argument("--train-limit", type=int, help="only the first N training images (a smoke run)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train, val = load_dataset(args.train), load_dataset(args.val)
    if args.train_limit:
        train = train.subset([r.image_id for r in train.records[: args.train_limit]])
    cache = args.workdir / "proposals"
    base = list(args.overrides) + [f"proposals.cache_dir={cache}"]
    delta = load_config(mser_sgpo.MSERSGPOConfig, args.config, base).erasing.delta
    deltas = [d for d in args.deltas if d != delta]

    started = time.perf_counter()
    runs = {delta: mser_sgpo.fit(train, args.config, base + [f"erasing.stages={args.stages}"], args.workdir / f"delta{delta:g}")}
    for d in deltas:
        share_stage1(args.workdir / f"delta{delta:g}", args.workdir / f"delta{d:g}")
        runs[d] = mser_sgpo.fit(train, args.config, base + ["erasing.stages=2", f"erasing.delta={d}"], args.workdir / f"delta{d:g}")
    fit_seconds = time.perf_counter() - started

    rows = rows_spec(args.stages, delta, deltas)
    preds = {r["name"]: {} for r in rows}
    main_run = runs[delta]
    prm_single, full = main_run.variant(stages=1, scoring="prm"), main_run.variant(stages=2, scoring="sgpo")
    t_prop, t_prm, t_full = [], [], []
    records = list(val)[: args.limit]
    for record in records:
        image = load_image(record.path)
        cfg = main_run.cfg.proposals
        entry = main_run.base.proposal_cache.entry(record.path, cfg.method, **cfg.settings)
        tick = time.perf_counter()
        write_npz(entry, generate_proposals(image, cfg.method, **cfg.settings))
        t_prop.append(time.perf_counter() - tick)
        # speed: whole predictions, proposals cached (both read the same file)
        tick = time.perf_counter()
        prm_single.predict(record, image)
        t_prm.append(time.perf_counter() - tick)
        tick = time.perf_counter()
        full.predict(record, image)
        t_full.append(time.perf_counter() - tick)
        # every row from one set of stage responses per run
        x = main_run.base.prepare(image)
        responses = {delta: main_run.variant(stages=args.stages).stage_responses(x)}
        for d in deltas:
            responses[d] = responses[delta][:1] + runs[d].variant(stages=2).stage_responses(x, skip=1)
        for r in rows:
            variant = runs[r["run"]].variant(stages=r["stages"], scoring=r["scoring"])
            preds[r["name"]][record.image_id] = variant.instances(record, image, responses[r["run"]])
        print(f"  image {record.image_id}: proposals {t_prop[-1]:.2f} s, PRM {t_prm[-1]:.2f} s, "
              f"MSER+SGPO T=2 {t_full[-1]:.2f} s", flush=True)

    scored = val.subset([r.image_id for r in records]) if args.limit else val
    result = {
        "method": "mser_sgpo", "commit": commit(), "config": str(args.config), "overrides": args.overrides,
        "train": {"images": len(train), "signal": "image-level tags", "seconds_this_run": fit_seconds},
        "speed": {"images": len(records), "device": str(main_run.device),
                  "median_s_prm_single_network": statistics.median(t_prm),
                  "median_s_mser_sgpo_T2": statistics.median(t_full),
                  "median_s_proposals": statistics.median(t_prop),
                  "image_size": main_run.cfg.data.image_size, "peak_backprop": main_run.cfg.test.peak_backprop},
        "machine": machine(),
        "rows": [{**r, "delta": r["run"], "all80": evaluate(scored, preds[r["name"]]),
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
    lines = ["| model | T | delta | scoring | classes | mAP^r@0.25 | @0.5 | @0.75 | ABO | COCO AP | AP50 | AP75 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for name in ("all80", "voc20"):
            if row[name] is None:
                continue
            v, c = row[name]["voc"], row[name]["coco"]
            lines.append(f"| {row['name']} | {row['stages']} | {row['delta']:g} | {row['scoring']} | {name} | "
                         f"{pct(v['mAP']['0.25'])} | {pct(v['mAP']['0.5'])} | {pct(v['mAP']['0.75'])} | "
                         f"{pct(v['abo'])} | {pct(c['AP'])} | {pct(c['AP50'])} | {pct(c['AP75'])} |")
    s = result["speed"]
    lines.append(f"\nInference s/image (median over {s['images']} images, proposals cached, {s['device']}): "
                 f"PRM single network {s['median_s_prm_single_network']:.2f}, MSER+SGPO T=2 "
                 f"{s['median_s_mser_sgpo_T2']:.2f}; proposal generation {s['median_s_proposals']:.2f}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
