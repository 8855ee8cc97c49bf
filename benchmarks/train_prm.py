"""Train PRM on the protocol's training set (coco128 + coco-train83 tags) with a config and overrides,
and print the out-of-fold tag mAP of its calibration (the number variants are chosen by).

    python benchmarks/train_prm.py --workdir runs/prm_x [--config wsis/configs/prm_cpu.yaml] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import ROOT, TRAIN_JSON, load_train_set

from wsis.data import load_dataset

from wsis.methods import prm as prm_method


def holdout_ids(n: int) -> set[int]:
    """Ids of the first ``n`` coco128 images with instances and tags (tune_retrieval.py's order)."""
    scored = [r for r in load_dataset(TRAIN_JSON) if r.gt is not None and len(r.gt) and r.tags]
    return {r.image_id for r in scored[:n]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=ROOT / "wsis/configs/prm_photos_cpu.yaml")
    parser.add_argument("--holdout", type=int, default=0, help="leave out the first N coco128 images with instances")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    records = load_train_set()
    if args.holdout:
        tuning = holdout_ids(args.holdout)
        records = records.subset([r.image_id for r in records if r.image_id not in tuning])
    prm_method.fit(records, config=args.config, overrides=args.overrides, workdir=args.workdir)
    meta = json.loads((args.workdir / "method.json").read_text())
    cal = meta.get("calibration", {})
    print(json.dumps({"workdir": str(args.workdir), "holdout": args.holdout, "images": len(records), "overrides": args.overrides, "oof_tag_mAP": cal.get("oof_tag_mAP"),
                      "fallback": cal.get("fallback"), "train_seconds": meta.get("train_seconds"),
                      "head_losses": meta.get("head_losses")}))


if __name__ == "__main__":
    main()
