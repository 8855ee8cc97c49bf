"""Fit the UCM proposals' ranker on TRAINING images: logistic regression of each candidate's best
IoU with any ground-truth object (a soft target in [0, 1]) on :data:`wsis.proposals.ucm.FEATURES`.

MCG ranks its candidates with a random forest regressing the same target on similar region
features; a linear model keeps the result a handful of numbers in the source. Images: coco128
(``--coco128`` first N by id) and coco-train83 (first M), never coco-val50. Writes the weights to
``benchmarks/results/ucm_ranker.json``; copy them into ``RANKER_WEIGHTS`` / ``RANKER_BIAS``.

    python benchmarks/fit_ucm_ranker.py [--coco128 64] [--train83 32] [--cache /tmp/hed-cache]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, commit  # noqa: E402

from wsis import masks as mask_ops  # noqa: E402
from wsis.proposals.cache import read_image  # noqa: E402
from wsis.proposals.ucm import FEATURES, ucm_candidates  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETS = {"coco128": ("coco128/annotations/instances_train2017.json", "coco128/train2017"),
        "train83": ("coco-train83/annotations/instances_train83.json", "coco-train83/train83")}


def training_images(counts: dict[str, int]) -> list[tuple[Path, list[dict]]]:
    out = []
    for name, n in counts.items():
        ann, folder = SETS[name]
        coco = COCO(str(DATA / ann))
        for image_id in sorted(coco.getImgIds())[:n]:
            info = coco.loadImgs(image_id)[0]
            anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a.get("iscrowd", 0)]
            out.append((DATA / folder / info["file_name"], [mask_ops.compress(coco.annToRLE(a)) for a in anns]))
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 200) -> tuple[np.ndarray, float]:
    """Cross-entropy against soft targets, standardised features, L-BFGS; weights in raw units."""
    mean, std = x.mean(0), x.std(0) + 1e-9
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    weights = w.detach().numpy() / std
    return weights, float(b.detach()) - float((weights * mean).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco128", type=int, default=64)
    parser.add_argument("--train83", type=int, default=32)
    parser.add_argument("--cache", type=Path, default=None, help="HED map cache folder")
    parser.add_argument("--min-area", type=float, default=0.0002)
    parser.add_argument("--out", type=Path, default=RESULTS / "ucm_ranker.json")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    xs, ys = [], []
    for path, rles in training_images({"coco128": args.coco128, "train83": args.train83}):
        cand = ucm_candidates(read_image(path), boundary_cache=None if args.cache is None else str(args.cache))
        keep = np.flatnonzero((cand.area_fraction >= args.min_area) & (cand.area_fraction <= 0.95))
        best = (mask_ops.iou([cand.rles[i] for i in keep], rles).max(axis=1) if rles
                else np.zeros(len(keep)))
        xs.append(cand.features[keep])
        ys.append(best)
    x, y = np.concatenate(xs), np.concatenate(ys)
    weights, bias = fit_logistic(x, y)
    pred = 1 / (1 + np.exp(-(x @ weights + bias)))
    corr = float(np.corrcoef(pred, y)[0, 1])
    result = {"features": list(FEATURES), "weights": weights.tolist(), "bias": bias, "candidates": len(y),
              "images": {"coco128": args.coco128, "coco-train83": args.train83},
              "correlation_with_best_iou": corr, "commit": commit(),
              "command": "python benchmarks/fit_ucm_ranker.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
