"""Train PRM's class layer on a frozen, cached backbone (coco128 + coco-train83 tags) and leave a PRM
workdir that ``wsis.methods.prm.load`` reads, plus ``thresholds.json`` (out-of-fold calibration on
the training images) for ``benchmarks/diagnose.py --thresholds``. A development driver for the
diagnosis until the method's config switches exist (issue 11).

    python benchmarks/prm_frozen.py --workdir runs/prm_frozen [--backbone NAME] [--prior] [--epochs N] [--lr X]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, commit, load_train_set
from wsis.backbones import create_backbone, imagenet_head
from wsis.config import load_config, to_dict
from wsis.cues.class_prior import has_prior, prior_class_weights
from wsis.cues.frozen_head import HeadConfig, fit_on_cache
from wsis.cues.prm import PRMNet
from wsis.data.images import atomic_write
from wsis.data.torch_data import tag_targets
from wsis.engine.feature_cache import FeatureCache
from wsis.methods.prm import PRMMethodConfig
from wsis.methods.trained import save_trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--prior", action="store_true")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=ROOT / "runs/feature_cache")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    cfg = load_config(PRMMethodConfig, ROOT / "wsis/configs/prm_cpu.yaml", [f"backbone={args.backbone}", *args.overrides])
    train = load_train_set()
    cats = sorted(train.categories)
    names = [train.categories[c] for c in cats]
    backbone = create_backbone(cfg.backbone)
    cache = FeatureCache(args.cache, backbone, cfg.prm.image_size)
    feats = torch.stack([cache.get(r.path, False) for r in train])
    flipped = torch.stack([cache.get(r.path, True) for r in train])
    targets = tag_targets(train.records, cats).float()
    prior = prior_class_weights(imagenet_head(backbone), names) if args.prior else None
    head_cfg = HeadConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=cfg.prm.batch_size)
    peak_args = dict(sub_pixel_factor=cfg.prm.sub_pixel_factor, win_size=cfg.prm.win_size, peak_filter=cfg.prm.peak_filter)
    fit = fit_on_cache(feats, flipped, targets, head_cfg, prior, has_prior(names) if args.prior else None,
                       folds=args.folds, default_threshold=cfg.prm.class_threshold, **peak_args)
    model = PRMNet(backbone, len(cats), **peak_args)
    model.classifier.load_state_dict(fit.layer.state_dict())
    args.workdir.mkdir(parents=True, exist_ok=True)
    meta = {"method": "prm", "config": to_dict(cfg), "category_ids": cats,
            "categories": {str(k): v for k, v in train.categories.items()},
            "frozen_head": {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay,
                            "prior": args.prior, "final_loss": fit.losses[-1], "commit": commit()}}
    save_trained(args.workdir, model, meta, started)
    with atomic_write(args.workdir / "thresholds.json") as f:
        json.dump(fit.calibration, f, indent=1)
    print(json.dumps({"seconds": time.perf_counter() - started, "loss": [fit.losses[0], fit.losses[-1]],
                      "oof_tag_mAP": fit.calibration.get("oof_tag_mAP"), "fallback": fit.calibration.get("fallback"),
                      "calibrated_classes": int(np.sum(fit.calibration.get("calibrated", [])))}))


if __name__ == "__main__":
    main()
