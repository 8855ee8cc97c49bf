"""Where a training step of the reference detector goes, and what its losses and gradient norm are
at the start: the forward time of each module (body, FPN, RPN, RoI heads; forward hooks) and the
step's forward / backward split, for the first few training images, on a config + overrides. Used
to decide whether caching the frozen body's features would buy a longer schedule (it saves at most
the body's share plus image decoding) and to see the gradient norm the clip acts on.

    python benchmarks/profile_reference_step.py [--config benchmarks/reference_cpu.yaml] [--steps 8] [key=value ...]

Timings on a shared machine: only ratios within one run mean anything.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, load_train_set
from wsis.config import load_config
from wsis.detectors.maskrcnn import (InstanceDataset, LabelMap, build_maskrcnn, collate, detector_optimizer,
                                     ground_truth_instances)
from wsis.methods.maskrcnn import MaskRCNNMethodConfig


def time_forward(module: torch.nn.Module, name: str, totals: dict[str, list[float]]) -> None:
    """Accumulate ``module``'s forward wall time under ``name``."""
    start: list[float] = []
    module.register_forward_pre_hook(lambda m, i: start.append(time.perf_counter()))
    module.register_forward_hook(lambda m, i, o: totals.setdefault(name, []).append(time.perf_counter() - start.pop()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "benchmarks/reference_cpu.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(MaskRCNNMethodConfig, args.config, args.overrides)
    train = load_train_set()
    labels = LabelMap(sorted(train.categories))
    torch.manual_seed(cfg.seed)
    model = build_maskrcnn(cfg.model, len(labels), data=cfg.data, test=cfg.test).train()
    data = InstanceDataset(train.records[: args.steps], ground_truth_instances, labels, cfg.data)
    optimizer = detector_optimizer(model, cfg.schedule.lr, cfg.schedule.momentum, cfg.schedule.weight_decay)
    totals: dict[str, list[float]] = {}
    for name, module in (("body", model.backbone.body), ("fpn", model.backbone.fpn), ("rpn", model.rpn),
                         ("roi_heads", model.roi_heads), ("box_head", model.roi_heads.box_head),
                         ("mask_head", model.roi_heads.mask_head)):
        time_forward(module, name, totals)
    fw, bw = [], []
    for i in range(args.steps):
        images, targets = collate([data[i]])
        start = time.perf_counter()
        losses = model(images, targets)
        mid = time.perf_counter()
        optimizer.zero_grad()
        sum(losses.values()).backward()
        fw.append(mid - start)
        bw.append(time.perf_counter() - mid)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        optimizer.step()
        print(f"step {i}: " + " ".join(f"{k[5:]} {v.item():.3f}" for k, v in losses.items())
              + f" | grad norm {norm:.1f} | forward {fw[-1]:.2f} s backward {bw[-1]:.2f} s", flush=True)
    step = np.median(fw[1:]) + np.median(bw[1:])
    print(f"median step {step:.2f} s (forward {np.median(fw[1:]):.2f}, backward {np.median(bw[1:]):.2f})")
    for name, t in totals.items():
        print(f"  {name:10s} forward {np.median(t[1:]):.3f} s = {100 * np.median(t[1:]) / step:.0f} % of a step")


if __name__ == "__main__":
    main()
