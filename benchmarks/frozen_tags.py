"""What the frozen backbone knows about the tags (diagnosis row a, upper side): image-level tag mAP
on coco-val50 of

* ``imagenet prior (no training)``: the backbone's own ImageNet softmax summed over each class's
  synsets (wsis.cues.class_prior), on the classes that have synsets;
* ``linear probe``: one-vs-rest logistic regression on the globally average-pooled frozen features
  (448 px, train images plain + mirrored), trained on the tags of the training set (coco128 +
  coco-train83 by default, ``--coco128-only`` for the issue's original measurement);
* ``linear probe + prior``: the same, initialised at the prior class layer and L2-pulled toward it
  instead of toward 0 (MAP with the prior as the Gaussian mean).

The L2 weight is chosen by 5-fold cross-validation on the training images (tag mAP of held-out
folds), never on coco-val50. Features come from wsis.engine.feature_cache (on disk under --cache).

    python benchmarks/frozen_tags.py [--backbones tf_efficientnet_lite0 tf_efficientnet_lite2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, VAL_JSON, commit, load_train_set

from wsis.backbones import create_backbone, imagenet_head
from wsis.cues.calibration import kfold_indices
from wsis.cues.class_prior import has_prior, imagenet_tag_scores, prior_class_weights
from wsis.data import load_dataset
from wsis.data.images import atomic_write
from wsis.data.torch_data import tag_targets
from wsis.engine.feature_cache import FeatureCache
from wsis.eval.tags import tag_ap

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1)


def pooled(cache: FeatureCache, records, flip: bool) -> torch.Tensor:
    return torch.stack([cache.get(r.path, flip).mean(dim=(1, 2)) for r in records])


def fit_probe(x: torch.Tensor, y: torch.Tensor, lam: float, w0: torch.Tensor | None = None,
              b0: torch.Tensor | None = None, steps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression per class (full batch L-BFGS), L2 on (w - w0)."""
    c = y.shape[1]
    w0 = torch.zeros(c, x.shape[1]) if w0 is None else w0
    b0 = torch.zeros(c) if b0 is None else b0
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w.T + b, y, reduction="sum") / len(x)
        loss = loss + lam * ((w - w0) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def mean_ap(scores: np.ndarray, targets: np.ndarray, columns: np.ndarray | None = None) -> tuple[float, int]:
    ap = tag_ap(scores, targets)
    if columns is not None:
        ap = np.where(columns, ap, np.nan)
    v = ~np.isnan(ap)
    return float(ap[v].mean()), int(v.sum())


def choose_lambda(xtr, ytr, n_images, prior) -> tuple[float, dict]:
    """5-fold CV over training images (both flips of an image stay in one fold)."""
    folds = kfold_indices(n_images, 5, seed=0)
    results = {}
    for lam in LAMBDAS:
        scores = np.zeros((n_images, ytr.shape[1]))
        for held in folds:
            keep = np.setdiff1d(np.arange(n_images), held)
            rows = np.r_[keep, keep + n_images]
            w, b = fit_probe(xtr[rows], ytr[rows], lam, *(prior or (None, None)))
            scores[held] = (xtr[held] @ w.T + b).numpy()
        results[lam] = mean_ap(scores, ytr[:n_images].numpy())[0]
    return max(results, key=results.get), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--cache", type=Path, default=ROOT / "runs/feature_cache")
    parser.add_argument("--coco128-only", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/frozen_tags")
    args = parser.parse_args()
    torch.set_num_threads(1)

    train, val = load_train_set(extra=not args.coco128_only), load_dataset(VAL_JSON)
    cats = sorted(train.categories)
    names = [train.categories[c] for c in cats]
    ytr1 = tag_targets(train.records, cats).float()
    ytr = torch.cat([ytr1, ytr1])
    yval = tag_targets(val.records, cats).numpy()
    prior_cols = has_prior(names)
    rows = []
    for name in args.backbones:
        started = time.perf_counter()
        backbone = create_backbone(name)
        cache = FeatureCache(args.cache, backbone, args.size)
        xtr = torch.cat([pooled(cache, train, False), pooled(cache, train, True)])
        xval = pooled(cache, val, False)
        head = imagenet_head(backbone)
        prior_scores = imagenet_tag_scores(head(xval), names).detach().numpy()
        m, n = mean_ap(prior_scores, yval, prior_cols)
        rows.append({"backbone": name, "variant": "imagenet prior (no training)", "tag_mAP": m, "classes": n})
        w0, b0 = prior_class_weights(head, names)
        for variant, prior in (("linear probe", None), ("linear probe + prior", (w0, b0))):
            lam, cv = choose_lambda(xtr, ytr, len(train), prior)
            w, b = fit_probe(xtr, ytr, lam, *(prior or (None, None)))
            scores = (xval @ w.T + b).numpy()
            m, n = mean_ap(scores, yval)
            mp, np_ = mean_ap(scores, yval, prior_cols)
            sheep = names.index("sheep")
            rows.append({"backbone": name, "variant": variant, "tag_mAP": m, "classes": n,
                         "tag_mAP_prior_classes": mp, "prior_classes": np_, "lambda": lam,
                         "cv_tag_mAP": cv, "sheep_AP": float(tag_ap(scores, yval)[sheep])})
        rows[-3]["tag_mAP_prior_classes"] = rows[-3]["tag_mAP"]
        rows[-3]["sheep_AP"] = float(tag_ap(prior_scores, yval)[names.index("sheep")])
        print(f"{name}: {time.perf_counter() - started:.0f} s ({cache.computed} forward passes)", file=sys.stderr)
        for r in rows[-3:]:
            print(json.dumps(r), file=sys.stderr)

    cmd = "python benchmarks/frozen_tags.py " + " ".join(sys.argv[1:])
    lines = ["# Frozen-backbone tag classifiers (diagnosis row a, what the features know)", "",
             f"Command: `{cmd}` (commit {commit()}). Train: {train.name or 'coco128'} tags "
             f"({len(train)} images, plain + mirrored), {args.size} px, pooled features; evaluate: coco-val50 "
             "image tags. L2 weight by 5-fold CV on the training images.", "",
             "| backbone | variant | tag mAP (classes) | tag mAP on classes with synsets (classes) | sheep AP | L2 (CV) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['variant']} | {100 * r['tag_mAP']:.1f} ({r['classes']}) | "
                     f"{100 * r.get('tag_mAP_prior_classes', float('nan')):.1f} ({r.get('prior_classes', r['classes'])}) | "
                     f"{100 * r['sheep_AP']:.1f} | {r.get('lambda', '-')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".md")) as f:
        f.write(text)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump({"command": cmd, "commit": commit(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
