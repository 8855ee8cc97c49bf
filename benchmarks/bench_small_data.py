"""What schedule makes PRM say something on a small own-photo set (issue #14, finding 2).

The first ``--images`` coco128 photos (by file name) are the "own photos": PRM is trained on their
tags only, once per (variant, epoch count), each a fresh run. Then, on the same training
images (nothing is measured on coco-val50), it reports what decides whether ``wsis predict``
returns anything: how many images have at least one class score (logit) at or above
``class_threshold`` (0), the share of tagged classes that reach it (tag recall) and the untagged
ones that do (false fires per image), and the training time so far.

    python benchmarks/bench_small_data.py [--images 20] [--variants default,small224_lr05]

Rows are kept in ``results/small_data.json`` by (variant, epochs) and the table is rendered from all
of them, so a variant can be (re)measured alone.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, commit
from wsis.data import load_dataset
from wsis.data.images import atomic_write, load_image
from wsis.structures import RecordSet

COCO128 = ROOT.parent / "shared" / "data" / "coco128" / "annotations" / "instances_train2017.json"

# name -> (config overrides, epoch stages)
VARIANTS: dict[str, tuple[list[str], list[int]]] = {
    "default": ([], [5, 20]),  # prm_cpu.yaml: 448 px, batch 16, lr 0.01
    "small224": (["data.image_size=224", "schedule.batch_size=4"], [10, 20, 40]),
    # at 20 epochs: prm_small.yaml (--config small)
    "small224_lr05": (["data.image_size=224", "schedule.batch_size=4", "schedule.lr=0.05"], [10, 20, 40]),
}


def own_photos(count: int) -> RecordSet:
    coco = load_dataset(COCO128)
    chosen = sorted(coco.records, key=lambda r: r.file_name)[:count]
    used = sorted({t for r in chosen for t in r.tags})
    # as a tags.csv would give them: tags only, no masks
    from dataclasses import replace
    records = [replace(r, gt=None, crowd=None, difficult=None) for r in chosen]
    return RecordSet(records, {c: coco.categories[c] for c in used}, f"coco128-first{count}")


@torch.no_grad()
def class_scores(predictor, records: RecordSet) -> np.ndarray:
    rows = []
    for r in records:
        x = predictor.prepare(load_image(r.path))
        rows.append(predictor.model(x)[0].cpu().numpy())
    return np.stack(rows)


def measure(scores: np.ndarray, records: RecordSet, category_ids: list[int], threshold: float) -> dict:
    tagged = np.zeros_like(scores, bool)
    for i, r in enumerate(records):
        for t in r.tags:
            tagged[i, category_ids.index(t)] = True
    fires = scores >= threshold
    return {
        "images_with_a_class": int(fires.any(axis=1).sum()),
        "tag_recall": float((fires & tagged).sum() / max(1, tagged.sum())),
        "false_fires_per_image": float((fires & ~tagged).sum() / len(records)),
        "top_tagged_logit_mean": float(np.where(tagged, scores, -np.inf).max(axis=1).mean()),
        "max_logit": float(scores.max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--epochs", help="only these epoch counts (comma-separated)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_small_data"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "small_data")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from wsis.methods import prm

    records = own_photos(args.images)
    store = args.out.with_suffix(".json")
    rows = json.loads(store.read_text())["rows"] if store.is_file() else []
    only = None if args.epochs is None else {int(e) for e in args.epochs.split(",")}
    for name in args.variants.split(","):
        overrides, stages = VARIANTS[name]
        for epochs in stages:
            if only is not None and epochs not in only:
                continue
            start = time.perf_counter()
            predictor = prm.fit(records, config=ROOT / "wsis" / "configs" / "prm_cpu.yaml",
                                overrides=[*overrides, f"schedule.epochs={epochs}"],
                                workdir=args.workdir / f"{name}-{epochs}")
            cfg = predictor.cfg
            steps = epochs * -(-len(records) // cfg.schedule.batch_size)
            row = {"variant": name, "overrides": overrides, "epochs": epochs, "steps": steps,
                   "train_seconds": round(time.perf_counter() - start, 1), "commit": commit(),
                   **measure(class_scores(predictor, records), records, predictor.category_ids, cfg.test.class_threshold)}
            rows = [r for r in rows if (r["variant"], r["epochs"]) != (name, epochs)] + [row]
            print(json.dumps(row), flush=True)
            write(rows, records, args, store)


def write(rows: list[dict], records: RecordSet, args: argparse.Namespace, store: Path) -> None:
    order = list(VARIANTS)
    rows = sorted(rows, key=lambda r: (order.index(r["variant"]), r["epochs"]))
    lines = [f"# PRM on {len(records)} own photos (the first coco128 files), measured on the training images",
             "", "`python benchmarks/bench_small_data.py --images N [--variants V] [--epochs E]`; each row is one "
             "fresh training run (its commit in the json). 2-core CPU shared with other jobs: seconds are upper "
             "bounds. A prediction is non-empty only for classes whose score (logit) reaches "
             "`test.class_threshold` = 0.", "",
             "| variant | overrides of prm_cpu.yaml | epochs | steps | images with a class >= threshold | tag recall | "
             "false fires / image | mean top tagged logit | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {' '.join(r['overrides']) or '(none)'} | {r['epochs']} | {r['steps']} | "
                     f"{r['images_with_a_class']}/{len(records)} | {r['tag_recall']:.2f} | {r['false_fires_per_image']:.2f} | "
                     f"{r['top_tagged_logit_mean']:.2f} | {r['train_seconds']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".md")) as f:
        f.write("\n".join(lines) + "\n")
    with atomic_write(store) as f:
        json.dump({"rows": rows, "images": len(records)}, f, indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
