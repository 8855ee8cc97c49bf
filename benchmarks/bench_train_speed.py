"""Training speed of PRM (issue 15, deliverable 3): seconds per step of the classifier's training with
every layer fine-tuned, with the first backbone stages frozen and cached (``model.frozen_stages``),
and with the whole backbone frozen and cached (``model.frozen_backbone``: the class layer alone), each
with the images loaded in this process or by two data-loader workers.

    python benchmarks/bench_train_speed.py --scenes DIR [--photos N] [--steps 4] [--threads 2]

``--scenes`` is a folder of synthetic scenes (``wsis demo``'s ``train/``; generated there if absent)
trained at the demo's size (256 px); ``--photos N`` adds the first N coco128 images at PRM's 448 px.
Batch 16, SGD as in training, lr 0 (weights do not move, so every step does the same work). The caches
are filled before timing (their one-off cost is reported as ``cache s``). Medians over ``--steps``
steps after one warm-up step. The detectors' equivalent (a cached frozen body saves at most the body's
~23 % of a step) is measured by ``profile_reference_step.py`` (``results/reference.md``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from common import ROOT, TRAIN_JSON, commit
from wsis.cues.prm import peak_stimulation, prm_loss
from wsis.engine.feature_cache import FeatureCache
from wsis.data.coco import read_coco, write_coco_gt
from wsis.data.synthetic import make_scenes
from wsis.data.torch_data import TagDataset
from wsis.methods.prm import build_model
from wsis.methods.prm.config import PRMNetConfig
from wsis.methods.prm.staged import staged_training

class _ClassLayer(torch.nn.Module):
    """Cached backbone features -> class scores (what ``fit_on_cache`` trains)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return peak_stimulation(self.model.crm_from_features(features), self.model.win_size, self.model.peak_filter)


VARIANTS = [  # (label, frozen stages: 0 none, "all" the whole backbone, data-loader workers)
    ("fine-tune every layer (paper)", 0, 0),
    ("fine-tune every layer, 2 loader workers", 0, 2),
    ("frozen_stages=2, cached", 2, 0),
    ("frozen_stages=3, cached", 3, 0),
    ("frozen_stages=3, cached, 2 loader workers", 3, 2),
    ("frozen backbone, cached (class layer only)", "all", 0),
]


def step_times(records, category_ids, size: int, frozen, workers: int, steps: int, cache: Path) -> dict:
    torch.manual_seed(0)
    model = build_model(PRMNetConfig(), len(category_ids))
    tags = TagDataset(records, category_ids, image_size=size, train=True, normalize=model.backbone.normalize)
    started = time.perf_counter()
    net, data = model, tags
    if frozen == "all":  # the frozen-backbone route: cached backbone output, the class layer alone
        cache_ = FeatureCache(cache, model.backbone, size)
        features = torch.stack([cache_.get(r.path, False) for r in records])
        data = TensorDataset(features, tags.targets)
        net = _ClassLayer(model)
    elif frozen:
        net, data = staged_training(model, tags, frozen, cache)
    cache_s = time.perf_counter() - started
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9)
    loader = DataLoader(data, batch_size=16, shuffle=True, num_workers=workers, drop_last=True,
                        generator=torch.Generator().manual_seed(0), persistent_workers=workers > 0)
    times: list[float] = []
    net.train()
    while len(times) < steps + 1:
        batch_start = time.perf_counter()
        for inputs, targets in loader:
            optimizer.zero_grad(set_to_none=True)
            prm_loss(net(inputs), targets).backward()
            optimizer.step()
            now = time.perf_counter()
            times.append(now - batch_start)
            batch_start = now
            if len(times) >= steps + 1:
                break
    return {"s_per_step": statistics.median(times[1:]), "steps": times[1:], "cache_s": cache_s,
            "trainable_params": sum(p.numel() for p in params)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=Path, required=True)
    parser.add_argument("--photos", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_speed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gt = args.scenes / "annotations.json"
    if not gt.is_file():
        write_coco_gt(make_scenes(args.scenes, num_images=240, seed=0), gt)
    settings = [("demo scenes, 256 px", read_coco(gt, image_root=args.scenes / "images"), 256)]
    if args.photos:
        coco = read_coco(TRAIN_JSON)
        settings.append((f"coco128[:{args.photos}], 448 px", coco.subset([r.image_id for r in coco.records[:args.photos]]), 448))
    rows = []
    for name, records, size in settings:
        category_ids = sorted(records.categories)
        recs = [r for r in records.records if r.tags]
        with tempfile.TemporaryDirectory(prefix="bench_train_speed_") as tmp:
            for label, frozen, workers in VARIANTS:
                r = step_times(recs, category_ids, size, frozen, workers, args.steps, Path(tmp) / str(frozen))
                rows.append({"setting": name, "variant": label, **r})
                print(f"{name} | {label}: {r['s_per_step']:.3f} s/step (cache {r['cache_s']:.1f} s)", flush=True)
    lines = ["| setting | variant | s / step (median) | x faster than fine-tuning | trainable params | cache s (once) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        base = next(r for r in rows if r["setting"] == row["setting"] and r["variant"] == VARIANTS[0][0])
        lines.append(f"| {row['setting']} | {row['variant']} | {row['s_per_step']:.3f} | "
                     f"{base['s_per_step'] / row['s_per_step']:.2f} | {row['trainable_params']:,} | {row['cache_s']:.1f} |")
    table = "\n".join(lines)
    print(table)
    command = "python benchmarks/bench_train_speed.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "commit": commit(),
                                                          "threads": args.threads, "rows": rows}, indent=1))
    args.out.with_suffix(".md").write_text(f"Command: `{command}` (commit {commit()}, {args.threads} threads)\n\n{table}\n")


if __name__ == "__main__":
    main()
