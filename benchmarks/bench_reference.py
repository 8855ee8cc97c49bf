"""The fully supervised reference (BENCHMARK.md): Mask R-CNN trained on the ground-truth boxes and
masks of the training set (coco128 + coco-train83, 211 images), scored with both protocols on all
80 classes and the VOC20 subset -- on its own training images (it must fit them before weak/full
means anything) and on coco-val50 -- with training wall time, inference seconds per image (median,
coco-val50) and peak resident memory. Writes ``<out>.json`` and prints the Markdown table.

    python benchmarks/bench_reference.py [--config wsis/configs/maskrcnn_cpu.yaml] [--workdir runs/bench_reference]
        [--train-eval-limit N] [key=value ...]

Training resumes from ``--workdir`` when interrupted; a finished run is loaded, not retrained.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from common import DATA, ROOT, commit, machine, pct, peak_rss_mib
from wsis.data import load_dataset
from wsis.data.images import atomic_write, load_image
from wsis.eval import evaluate
from wsis.methods import maskrcnn
from wsis.structures import RecordSet

TRAIN_JSONS = (DATA / "coco128/annotations/instances_train2017.json",
               DATA / "coco-train83/annotations/instances_train83.json")
VAL_JSON = DATA / "coco-val50/annotations/instances_val2017.json"


def training_set(paths=TRAIN_JSONS) -> RecordSet:
    """The protocol's training set: the records of every json, one category table (they must agree)."""
    sets = [load_dataset(p) for p in paths]
    for s, p in zip(sets[1:], paths[1:]):
        if s.categories != sets[0].categories:
            raise SystemExit(f"{p}: its categories differ from {paths[0]}'s")
    return RecordSet([r for s in sets for r in s.records], dict(sets[0].categories), "+".join(s.name for s in sets))


def snapshot_checkpoint(workdir: Path, config: Path, overrides, train: RecordSet, train_seconds: float) -> None:
    """Turn an unfinished run's ``last.pt`` into a loadable model (``model.pt`` + ``method.json``),
    recording the step it stopped at and the training wall time measured outside."""
    from wsis.config import load_config, to_dict
    from wsis.engine.checkpoint import load_checkpoint, save_checkpoint
    from wsis.methods.trained import MODEL_FILE, save_trained

    state = load_checkpoint(workdir / "last.pt")
    cfg = load_config(maskrcnn.MaskRCNNMethodConfig, config, list(overrides))
    meta = {**state["config"], "config": to_dict(cfg), "stopped_at_step": int(state["step"])}
    save_checkpoint(workdir / MODEL_FILE, {"model": state["model"]})
    save_trained(workdir, None, meta, time.perf_counter() - train_seconds)


def timed_predictions(predictor, records) -> tuple[dict, list[float]]:
    preds, seconds = {}, []
    for record in records:
        image = load_image(record.path)
        start = time.perf_counter()
        preds[record.image_id] = predictor.predict(record, image)
        seconds.append(time.perf_counter() - start)
    return preds, seconds


@torch.no_grad()
def rpn_recall(predictor, records, thresholds=(0.5, 0.7)) -> dict:
    """Fraction of the non-crowd ground-truth boxes that one of the RPN's test-time proposals
    (``rpn_post_nms_top_n_test`` per image) covers with box IoU >= t."""
    from torchvision.models.detection.transform import resize_boxes
    from torchvision.ops import box_iou

    from wsis import masks as mask_ops
    from wsis.detectors.maskrcnn import image_to_tensor

    model, best = predictor.model.eval(), []
    for record in records:
        gt = record.gt.select(~record.crowd)
        if len(gt) == 0:
            continue
        x = image_to_tensor(load_image(record.path)).to(predictor.device)
        images, _ = model.transform([x])
        proposals, _ = model.rpn(images, model.backbone(images.tensors))
        boxes = resize_boxes(proposals[0], images.image_sizes[0], tuple(x.shape[-2:]))
        gt_boxes = torch.from_numpy(mask_ops.to_bbox(gt.rles()).astype("float32"))
        best.append(box_iou(gt_boxes, boxes).max(dim=1).values)
    best = torch.cat(best)
    return {"gt_boxes": len(best), **{f"recall@{t}": float((best >= t).float().mean()) for t in thresholds}}


def scores(gt, preds) -> dict:
    return {"all80": evaluate(gt, preds), "voc20": evaluate(gt, preds, subset="voc20")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "wsis/configs/maskrcnn_cpu.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/bench_reference")
    parser.add_argument("--val", type=Path, default=VAL_JSON)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/reference")
    parser.add_argument("--train-only", action="store_true", help="train (or resume), evaluate nothing")
    parser.add_argument("--train-eval-every", type=int, default=1,
                        help="score every k-th training image (both folders; the CPU budget's choice)")
    parser.add_argument("--stopped-at-checkpoint", type=float, metavar="TRAIN_SECONDS",
                        help="an unfinished run: score its last checkpoint (the step it reached is reported), "
                             "trained for TRAIN_SECONDS of wall time")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)

    train, val = training_set(), load_dataset(args.val)
    started = time.perf_counter()
    if args.stopped_at_checkpoint and not (args.workdir / "method.json").is_file():
        snapshot_checkpoint(args.workdir, args.config, args.overrides, train, args.stopped_at_checkpoint)
    if (args.workdir / "method.json").is_file():
        predictor = maskrcnn.load(args.workdir)
    else:
        predictor = maskrcnn.fit(train, args.config, args.overrides, args.workdir)
    fit_seconds = time.perf_counter() - started
    if args.train_only:
        return
    meta = json.loads((args.workdir / "method.json").read_text())
    train_eval = train.subset([r.image_id for r in train][:: args.train_eval_every])
    train_preds, _ = timed_predictions(predictor, train_eval)
    val_preds, seconds = timed_predictions(predictor, val)
    recall = {"train": rpn_recall(predictor, train_eval), "val": rpn_recall(predictor, val)}
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "commit": commit(),
        "config": meta["config"], "overrides": args.overrides,
        "train": {"images": len(train), "steps": meta["steps"], "epochs": meta["epochs"],
                  "stopped_at_step": meta.get("stopped_at_step"),
                  "seconds": meta.get("train_seconds"), "seconds_this_run": fit_seconds},
        "train_images_scored": len(train_eval),
        "on_train": scores(train_eval, train_preds), "on_val": scores(val, val_preds), "rpn_recall": recall,
        "inference_median_s": statistics.median(seconds), "val_images": len(val),
        "peak_rss_mib": peak_rss_mib(),
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2)
    print(markdown(result))



def markdown(r: dict) -> str:
    lines = ["| scored on | classes | mAP^r@0.25 | @0.5 | @0.7 | @0.75 | ABO | COCO AP | AP50 | AP75 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for where, label in (("on_train", f"training images ({r['train_images_scored']})"),
                         ("on_val", f"coco-val50 ({r['val_images']})")):
        for subset in ("all80", "voc20"):
            v, c = r[where][subset]["voc"], r[where][subset]["coco"]
            lines.append(f"| {label} | {subset} | {pct(v['mAP']['0.25'])} | {pct(v['mAP']['0.5'])} | "
                         f"{pct(v['mAP']['0.7'])} | {pct(v['mAP']['0.75'])} | {pct(v['abo'])} | "
                         f"{pct(c['AP'])} | {pct(c['AP50'])} | {pct(c['AP75'])} |")
    rec = r["rpn_recall"]
    lines.append(f"\nRPN recall of the ground-truth boxes (test-time proposals, box IoU >= 0.5 / 0.7): training images "
                 f"{pct(rec['train']['recall@0.5'])} / {pct(rec['train']['recall@0.7'])}, coco-val50 "
                 f"{pct(rec['val']['recall@0.5'])} / {pct(rec['val']['recall@0.7'])}")
    stopped = r["train"].get("stopped_at_step")
    steps = f"stopped at step {stopped} of {r['train']['steps']}" if stopped else f"{r['train']['steps']} steps"
    lines.append(f"\ntrain {r['train']['seconds'] or 0:.0f} s ({steps}), "
                 f"{r['inference_median_s']:.2f} s/image (median, coco-val50), peak RSS {r['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
