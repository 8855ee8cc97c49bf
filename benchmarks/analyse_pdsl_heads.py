"""What each of PDSL's mask heads has learned, and what drives it, for the trained variants of a
``bench_pdsl.py`` workdir. Three measurements per variant:

* **heads on ground-truth boxes** (validation images, the first test scale, no flip): for the
  class-agnostic head M^0 and each class-specific head M^1..M^{n^m} (channel of the instance's
  class), the median over instances of the mask's highest probability, of its mean probability,
  of its share of pixels above 0.5, and the median IoU of ``p > 0.5`` with the ground-truth mask
  cut to the box (Mask R-CNN's target projection, 2 x mask_roi_size square);
* **detection activation of Eq. 8** on training batches (the model's own augmentation, no
  gradient): quantiles over foreground RoIs of what L_ACL pulls the class-specific masks towards
  (``loss.correlation_target`` decides whether it is the raw score or relative to the best
  proposal); only for variants with L_ACL;
* **gradient norms per part** on the same batches (one backward pass each, weights not updated):
  median and largest norm of the mask heads, of the detection head and of the shared 1x1 channel
  reduction, and the share of steps in which one clip over the whole network at
  ``schedule.grad_clip`` would have scaled the mask heads' step down.

This reads the models; it tunes nothing. ::

    python benchmarks/analyse_pdsl_heads.py --workdir runs/bench_pdsl_synth \\
        --train runs/synth/train/annotations.json --val runs/synth/val/annotations.json \\
        --out benchmarks/results/pdsl_heads_synthetic
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import roi_align

import wsis.methods.pdsl.model as pdsl_model
from common import ROOT, add_data_args, commit
from wsis.data import load_dataset
from wsis.data.images import atomic_write, load_image
from wsis.masks import decode_many
from wsis.methods import pdsl
from wsis.methods.pdsl import cache_dirs, training_data
from wsis.methods.trained import MODEL_FILE
from wsis.methods.pdsl.data import collate, resize_image, resize_scale
from wsis.methods.pdsl.model import pad_images
from wsis.proposals.cache import ProposalCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(parser)
    parser.add_argument("--workdir", type=Path, required=True, help="a bench_pdsl.py workdir")
    parser.add_argument("--variants", nargs="+", help="default: every trained variant in the workdir")
    parser.add_argument("--val-images", type=int, default=30)
    parser.add_argument("--train-images", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pdsl_heads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train, val = load_dataset(args.train), load_dataset(args.val)
    names = args.variants or sorted(p.parent.name for p in args.workdir.glob(f"*/{MODEL_FILE}"))
    result = {"commit": commit(), "workdir": str(args.workdir), "train": str(args.train), "val": str(args.val),
              "val_images": args.val_images, "train_images": args.train_images, "variants": {}}
    for name in names:
        predictor = pdsl.load(args.workdir / name)
        result["variants"][name] = {
            "heads": heads_on_ground_truth(predictor, list(val)[: args.val_images]),
            **training_signals(predictor, args.workdir / name, train, args.train_images)}
        print(name, json.dumps(result["variants"][name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2)
    print(markdown(result))


@torch.no_grad()
def heads_on_ground_truth(predictor: "pdsl.PDSLPredictor", records) -> list[dict]:
    model = predictor.model.eval()
    index = {c: i for i, c in enumerate(predictor.category_ids)}
    size = 2 * model.cfg.mask_roi_size
    per_head: dict[int, dict[str, list[float]]] = {}
    for record in records:
        gt = record.gt
        if gt is None or len(gt) == 0 or not gt.has_masks:
            continue
        keep = [k for k, label in enumerate(gt.labels) if int(label) in index]
        if not keep:
            continue
        image = load_image(record.path)
        h, w = image.shape[:2]
        scale = resize_scale(h, w, predictor.cfg.test.scales[0], predictor.cfg.test.max_size)
        x = torch.from_numpy(np.ascontiguousarray(resize_image(image, scale))).permute(2, 0, 1)
        feats = model.features(pad_images([model.backbone.normalize(x)], model.backbone.stride))
        boxes = torch.as_tensor(np.asarray(gt.boxes)[keep], dtype=torch.float32)
        classes = torch.as_tensor([index[int(gt.labels[k])] for k in keep])
        rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
        agnostic, specific = model.mask_logits(feats, rois * torch.tensor([1, scale, scale, scale, scale]), classes)
        masks = torch.from_numpy(decode_many(gt.masks)[keep].astype(np.float32))[:, None]
        truth = roi_align(masks, torch.cat([torch.arange(len(keep))[:, None].float(), boxes], dim=1), size,
                          1.0, 2, True)[:, 0] >= 0.5
        for m, logits in enumerate([agnostic, *specific]):
            p = logits.sigmoid()
            on = p > 0.5
            iou = (on & truth).flatten(1).sum(1) / (on | truth).flatten(1).sum(1).clamp_min(1)
            s = per_head.setdefault(m, {"max": [], "mean": [], "above": [], "iou": []})
            s["max"] += p.flatten(1).max(1).values.tolist()
            s["mean"] += p.flatten(1).mean(1).tolist()
            s["above"] += on.float().flatten(1).mean(1).tolist()
            s["iou"] += iou.tolist()
    return [{"head": m, "instances": len(s["max"]), **{k: statistics.median(v) for k, v in s.items()}}
            for m, s in sorted(per_head.items())]


def training_signals(predictor: "pdsl.PDSLPredictor", workdir: Path, train, num_images: int) -> dict:
    model, cfg = predictor.model, predictor.cfg
    model.train()
    proposal_dir, grabcut_dir = cache_dirs(cfg, workdir)
    records = [r for r in train.records if r.tags]
    data, grabcut = training_data(cfg, model, records, predictor.category_ids, ProposalCache(proposal_dir), grabcut_dir)
    activations: list[torch.Tensor] = []
    original = pdsl_model.correlation_loss

    def spy(specific, detection, foreground, tau=5.0):
        activations.append(detection.detach()[foreground])
        return original(specific, detection, foreground, tau)

    parts = {"masks": model.masker, "detection": model.detector, "reduce": model.reduce}
    norms: dict[str, list[float]] = {k: [] for k in [*parts, "all"]}
    pdsl_model.correlation_loss = spy
    try:
        for i in range(min(num_images, len(data))):
            model.zero_grad(set_to_none=True)
            sum(model(collate([data[i]]), grabcut.masks).values()).backward()
            for name, module in [*parts.items(), ("all", model)]:
                grads = [p.grad for p in module.parameters() if p.grad is not None]
                norms[name].append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
                                   if grads else 0.0)
    finally:
        pdsl_model.correlation_loss = original
        model.zero_grad(set_to_none=True)
    clip = cfg.schedule.grad_clip
    out = {"grad_norms": {k: {"median": statistics.median(v), "max": max(v)} for k, v in norms.items()},
           "global_clip_shrinks_masks": (float(np.mean([n > clip for n in norms["all"]])) if clip else None),
           # with n^r = 0 Eq. 8 always uses S^0 relative to the best proposal (wsis/methods/pdsl/masks.py)
           "correlation_target": cfg.loss.correlation_target if cfg.model.refine_heads else "relative S^0"}
    if activations:
        a = torch.cat(activations)
        out["detection_activation"] = {f"q{int(q * 100)}": float(torch.quantile(a, q)) for q in (0.1, 0.5, 0.9)}
    return out


def markdown(result: dict) -> str:
    lines = ["| variant | head | max p | mean p | share > 0.5 | IoU with GT |", "|---|---|---|---|---|---|"]
    for name, v in result["variants"].items():
        for h in v["heads"]:
            label = "M^0 (agnostic)" if h["head"] == 0 else f"M^{h['head']}"
            lines.append(f"| {name} | {label} | {h['max']:.3f} | {h['mean']:.3f} | {h['above']:.3f} | {h['iou']:.3f} |")
    lines += ["", "| variant | Eq. 8 target | detection activation q10 / q50 / q90 | grad norm masks / detection / "
              "reduce (median, max) | steps a global clip would shrink |", "|---|---|---|---|---|"]
    for name, v in result["variants"].items():
        d = v.get("detection_activation")
        act = f"{d['q10']:.3f} / {d['q50']:.3f} / {d['q90']:.3f}" if d else "- (no L_ACL)"
        g = v["grad_norms"]
        norm = " / ".join(f"{g[k]['median']:.2f}, {g[k]['max']:.1f}" for k in ("masks", "detection", "reduce"))
        share = v["global_clip_shrinks_masks"]
        lines.append(f"| {name} | {v['correlation_target'] if d else '-'} | {act} | {norm} | "
                     f"{'-' if share is None else f'{100 * share:.0f} %'} |")
    lines.append(f"\nHeads: median over the ground-truth instances of the first {result['val_images']} images of "
                 f"{result['val']}; training signals: the first {result['train_images']} tagged images of "
                 f"{result['train']} (epoch-0 augmentation).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
