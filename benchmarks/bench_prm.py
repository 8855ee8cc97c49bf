"""PRM benchmark entry (../shared/BENCHMARK.md): train on coco128 tags, score on coco-val50.

Trains (or resumes) PRM in ``--workdir``, then for every validation image generates its proposals
(timed, then cached) and runs PRM inference on the cached proposals (timed), so inference seconds
per image are reported excluding and including proposal generation. Scores both protocols on all
80 classes and on the VOC20 subset; writes ``<out>.json`` (metrics, per-class AP@0.5, timings,
config, commit) and prints the Markdown row(s).

    python benchmarks/bench_prm.py [--config wsis/configs/prm_cpu.yaml] [--workdir runs/bench_prm] [key=value ...]
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
from wsis.eval import evaluate
from wsis.methods import prm as prm_method
from wsis.methods.trained import META_FILE
from wsis.proposals import generate_proposals
from wsis.proposals.precomputed import write_npz



def time_inference(predictor, records, limit: int | None) -> tuple[dict, list[float], list[float]]:
    """Predictions plus per-image seconds without and with proposal generation."""
    preds, t_prop, t_prm = {}, [], []
    cfg = predictor.cfg.proposals
    for record in list(records)[:limit]:
        image = load_image(record.path)
        entry = predictor.proposal_cache.entry(record.path, cfg.method, **cfg.settings)
        start = time.perf_counter()
        proposals = generate_proposals(image, cfg.method, **cfg.settings)
        t_prop.append(time.perf_counter() - start)
        write_npz(entry, proposals)
        start = time.perf_counter()
        preds[record.image_id] = predictor.predict(record, image)
        t_prm.append(time.perf_counter() - start)
        print(f"  image {record.image_id}: proposals {t_prop[-1]:.2f} s, PRM + retrieval {t_prm[-1]:.2f} s, "
              f"{len(preds[record.image_id])} instances", flush=True)
    return preds, t_prop, t_prm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(parser, train_set=True)
    parser.add_argument("--config", type=Path, default=ROOT / "wsis/configs/prm_cpu.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/bench_prm")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/prm")
    parser.add_argument("--limit", type=int, help="only the first N validation images (a smoke run)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    train = training_records(args)
    val = load_dataset(args.val)
    started = time.perf_counter()
    predictor = prm_method.fit(train, config=args.config, overrides=args.overrides, workdir=args.workdir)
    fit_seconds = time.perf_counter() - started
    meta = json.loads((args.workdir / META_FILE).read_text())
    preds, t_prop, t_prm = time_inference(predictor, val, args.limit)
    scored = val.subset(list(preds)) if args.limit else val

    result = {
        "method": "prm", "commit": commit(), "config": meta["config"],
        "train": {"images": len(train), "signal": "image-level tags",
                  "seconds_this_run": fit_seconds, "seconds_training": meta.get("train_seconds")},
        "inference": {"images": len(preds),
                      "median_s_excluding_proposals": statistics.median(t_prm),
                      "median_s_including_proposals": statistics.median(a + b for a, b in zip(t_prop, t_prm)),
                      "median_s_proposals": statistics.median(t_prop),
                      "image_size": meta["config"].get("classifier", meta["config"].get("prm"))["image_size"]},
        "peak_rss_mib": peak_rss_mib(),
        "machine": machine(),
        "all80": evaluate(scored, preds),
        "voc20": evaluate(scored, preds, subset="voc20"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2)
    print(markdown_rows(result))


def markdown_rows(r: dict) -> str:
    lines = ["| method | classes | mAP^r@0.25 | @0.5 | @0.7 | @0.75 | ABO | COCO AP | AP50 | AP75 | "
             "train s | s/img (excl. / incl. proposals) | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    inf = r["inference"]
    for name in ("all80", "voc20"):
        m = r[name]
        v, c = m["voc"], m["coco"]
        lines.append(
            f"| PRM ({r['config']['backbone']}) | {name} | {pct(v['mAP']['0.25'])} | {pct(v['mAP']['0.5'])} | "
            f"{pct(v['mAP']['0.7'])} | {pct(v['mAP']['0.75'])} | {pct(v['abo'])} | {pct(c['AP'])} | "
            f"{pct(c['AP50'])} | {pct(c['AP75'])} | {r['train']['seconds_training'] or 0:.0f} | "
            f"{inf['median_s_excluding_proposals']:.2f} / {inf['median_s_including_proposals']:.2f} | "
            f"{r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
