"""``wsis demo``: the whole pipeline on the embedded synthetic scenes, on a laptop CPU.

Generates a train and a validation set of synthetic scenes (seeded), trains a method on the train
tags only, predicts instances on the validation images, scores them with both protocols and writes
an overlay page. Every stage writes to ``out`` and is skipped or resumed when run again.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

from wsis.data.coco import read_coco, write_coco_gt, write_coco_results
from wsis.data.images import atomic_write
from wsis.data.synthetic import make_scenes
from wsis.eval import evaluate, format_table
from wsis.methods import get_method
from wsis.structures import RecordSet

CONFIG_DIR = Path(__file__).parent / "configs"


def scenes(folder: Path, num_images: int, seed: int) -> RecordSet:
    """The synthetic split in ``folder``, generated once (deterministic in ``seed``)."""
    gt = folder / "annotations.json"
    if not gt.is_file():
        write_coco_gt(make_scenes(folder, num_images=num_images, seed=seed), gt)
    return read_coco(gt, image_root=folder / "images")


def run_demo(out: Path, *, num_train: int = 240, num_val: int = 60, seed: int = 0, method: str = "prm",
             overrides: Sequence[str] = ()) -> dict:
    out = Path(out)
    started = time.perf_counter()
    train = scenes(out / "train", num_train, seed)
    val = scenes(out / "val", num_val, seed + 1_000_003)  # another seed: no image shared with train
    print(f"synthetic scenes: {len(train)} train images ({train.num_instances} instances, tags only used), "
          f"{len(val)} validation images ({val.num_instances} instances) in {out}")

    module = get_method(method)
    config = CONFIG_DIR / f"demo_{method}.yaml"
    predictor = module.fit(train, config=config if config.is_file() else None, overrides=overrides,
                           workdir=out / f"{method}_run")
    preds = predictor.predict_records(val, progress=True)
    write_coco_results(preds, out / "predictions.json")

    report = evaluate(val, preds)
    table = format_table(report)
    print(table)
    with atomic_write(out / "metrics.json") as f:
        json.dump(report, f, indent=2)

    from wsis.viz import write_overlays

    index = write_overlays(val.records, out / "overlays", predictions=preds, categories=val.categories,
                           side_by_side=True, score_threshold=0.0)
    print(f"demo finished in {time.perf_counter() - started:.0f} s: metrics {out / 'metrics.json'}, "
          f"overlays {index}")
    return report
