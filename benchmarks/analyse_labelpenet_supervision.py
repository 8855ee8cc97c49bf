"""How right is the supervision each Label-PEnet module hands on? On a run trained on the protocol's
211 coco images (tags only), each module's stored calibrated instances of its training images are
scored against those images' ground truth: instances per image, mean weight, and the fraction whose
box (and mask) has IoU >= 0.5 with a ground-truth instance of its class. ``--min-sizes`` relabels the
classification module's candidates B^1 (the module unchanged) with proposals under a side of S px
dropped (``data.min_proposal_size``), on every ``--every``-th training image. Whether a module's
predictions lie under ``test.score_threshold``: ``labelpenet_diagnosis/threshold_scores.py RUN MODULE coco``.

    python benchmarks/analyse_labelpenet_supervision.py --workdir RUN [--min-sizes 0 32 64 --every 2] \
        [--out benchmarks/results/labelpenet_supervision]

These rows are what the next module learns from; a setting chosen by them never looks at coco-val50.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, commit, load_train_set  # noqa: E402

from wsis.data.images import atomic_write, load_image  # noqa: E402
from wsis.eval.diagnosis import candidate_overlaps  # noqa: E402
from wsis.methods.labelpenet import OUTPUTS  # noqa: E402
from wsis.methods.labelpenet.calibration import Candidates  # noqa: E402
from wsis.methods.labelpenet.config import MODULES  # noqa: E402
from wsis.methods.labelpenet.data import SupervisionStore, keep_proposals  # noqa: E402
from wsis.structures import ImageRecord  # noqa: E402


def overlaps(c: Candidates, record: ImageRecord, category_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return candidate_overlaps(record, c.boxes, c.masks, [category_ids[k] for k in c.labels])


def summary(found: list[tuple[Candidates, np.ndarray, np.ndarray, ImageRecord]]) -> dict:
    n = sum(len(c.labels) for c, *_ in found)
    box = np.concatenate([b for _, b, _, _ in found]) if n else np.zeros(0)
    mask = np.concatenate([m for _, _, m, _ in found]) if n else np.zeros(0)
    area = [(b[2] - b[0]) * (b[3] - b[1]) / (r.width * r.height) for c, _, _, r in found for b in c.boxes]
    weights = np.concatenate([c.weights for c, *_ in found]) if n else np.zeros(0)
    return {"images": len(found), "instances": n, "per_image": n / max(len(found), 1),
            "mean_weight": float(weights.mean()) if n else None,
            "box_right": float((box >= 0.5).mean()) if n else None, "mask_right": float((mask >= 0.5).mean()) if n else None,
            "median_box_area": float(np.median(area)) if n else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="a Label-PEnet run on the protocol's training set")
    parser.add_argument("--min-sizes", type=float, nargs="*", default=[], help="relabel B^1 at these proposal sizes")
    parser.add_argument("--every", type=int, default=2, help="relabel every N-th training image")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/labelpenet_supervision")
    args = parser.parse_args()
    torch.set_num_threads(1)
    records = load_train_set()
    meta = json.loads((args.workdir / "method.json").read_text())
    category_ids = meta["category_ids"]
    out: dict = {"command": "python " + " ".join(sys.argv), "commit": commit(), "workdir": str(args.workdir),
                 "stored": {}, "relabelled": {}}
    for module in MODULES[:-1]:
        store = SupervisionStore(args.workdir / module / OUTPUTS)
        found = [(c, *overlaps(c, r, category_ids), r) for r in records if store.has(r.image_id)
                 for c in [store.load(r.image_id)]]
        out["stored"][module] = summary(found)
    if args.min_sizes:
        from wsis.methods.labelpenet import load
        from wsis.methods.labelpenet.inference import label_image

        predictor = load(args.workdir)
        cfg, net = predictor.cfg, predictor.net
        cache = cfg.proposals.cache(args.workdir)
        index = {c: i for i, c in enumerate(category_ids)}
        for size in args.min_sizes:
            found = []
            for r in records.records[:: args.every]:
                tags = np.zeros(len(category_ids), bool)
                tags[[index[t] for t in r.tags if t in index]] = True
                boxes = keep_proposals(cfg.proposals.get(cache, r.path).boxes, size)
                c = label_image(net, "classification", load_image(r.path), tags, boxes, cfg, torch.device("cpu"))
                found.append((c, *overlaps(c, r, category_ids), r))
            out["relabelled"][f"{size:g}"] = summary(found)
            print(size, out["relabelled"][f"{size:g}"], flush=True)

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    lines = [f"# What each Label-PEnet module hands on (training images; `{args.out.name}.json`)", "",
             f"Command: `{out['command']}` (commit {out['commit']})", "",
             "| supervision | images | instances (per image) | mean weight | box right % | mask right % | median box area % |",
             "|---|---|---|---|---|---|---|"]
    rows = [(f"{m} outputs (stored)", s) for m, s in out["stored"].items()]
    rows += [(f"classification B^1 relabelled, min_proposal_size {k}", s) for k, s in out["relabelled"].items()]
    for name, s in rows:
        weight = "-" if s["mean_weight"] is None else f"{s['mean_weight']:.3f}"
        lines.append(f"| {name} | {s['images']} | {s['instances']} ({s['per_image']:.2f}) | {weight} | "
                     f"{pct(s['box_right'])} | {pct(s['mask_right'])} | {pct(s['median_box_area'])} |")
    lines += ["", "*right*: IoU >= 0.5 with a ground-truth instance of the candidate's class in its image."]
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(out, f, indent=2)
    with atomic_write(args.out.with_suffix(".md")) as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
