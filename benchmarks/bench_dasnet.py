"""DASNet's supervision ladder (the analogue of papers/003 Tables 1-2) on the shared protocol:
boxes of coco128 + coco-train83 (211 images), masks of the first N of them by ascending image id,
scored on coco-val50.

Rows: boxes-as-masks (each detected box filled: the same detector as the DASNet rows), DASNet with
masks of 5 / 25 / all 211 images, and the fully supervised Mask R-CNN reference read from
``benchmarks/results/reference.md`` when that file exists. The detector depends only on the boxes,
so it is trained once (in the first rung of ``--ladder``) and reused by the others (``model.detector.weights``).

    python benchmarks/bench_dasnet.py [--config wsis/configs/dasnet_cpu.yaml] [--workdir runs/bench_dasnet]

Every run resumes (stages checkpoint; predictions of a finished rung are cached in its workdir).
Writes benchmarks/results/dasnet.md and dasnet.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, ROOT, VAL_JSON, TRAIN_JSON, commit, peak_rss_mib  # noqa: E402

from wsis.data import load_dataset  # noqa: E402
from wsis.data.coco import read_coco_results, write_coco_results  # noqa: E402
from wsis.data.images import atomic_write  # noqa: E402
from wsis.eval import evaluate  # noqa: E402
from wsis.eval.semantic import semantic_miou  # noqa: E402
from wsis.methods import dasnet  # noqa: E402
from wsis.methods.dasnet.output import semantic_instances  # noqa: E402
from wsis.structures import Instances, RecordSet  # noqa: E402

TRAIN83_JSON = DATA / "coco-train83/annotations/instances_train83.json"
RESULTS = ROOT / "benchmarks" / "results"


def training_set() -> RecordSet:
    a, b = load_dataset(TRAIN_JSON), load_dataset(TRAIN83_JSON)
    overlap = {r.image_id for r in a} & {r.image_id for r in b}
    if overlap:
        raise SystemExit(f"coco128 and coco-train83 share image ids {sorted(overlap)[:5]}")
    return RecordSet(a.records + b.records, {**a.categories, **b.categories}, "coco128+coco-train83")


def gt_boxes(record) -> Instances:
    keep = ~record.crowd
    return Instances(record.gt.image_size, record.gt.boxes[keep], record.gt.labels[keep])


def predict(predictor, val: RecordSet, out: Path, boxes: bool = False, oracle: bool = False
            ) -> tuple[dict, dict, float]:
    """Instances and semantic maps (as one instance per class) of every val image, cached in ``out``;
    ``oracle``: the ground-truth boxes instead of the detector's (a diagnosis, never a benchmark row)."""
    inst_file, sem_file, time_file = out / "instances.json", out / "semantic.json", out / "seconds.json"
    if inst_file.is_file() and sem_file.is_file() and time_file.is_file():
        return read_coco_results(inst_file, val), read_coco_results(sem_file, val), json.loads(time_file.read_text())
    predictor.masks = "boxes" if boxes else "instance"
    instances, semantic, seconds = {}, {}, []
    for r in val:
        start = time.perf_counter()
        if oracle:
            inst, label_map = predictor.predict_given_boxes(r, gt_boxes(r))
            sem = None if boxes else semantic_instances(label_map)
        elif boxes:
            inst = predictor.predict(r)
            sem = None
        else:
            inst, label_map = predictor.predict_both(r)
            sem = semantic_instances(label_map)
        seconds.append(time.perf_counter() - start)
        instances[r.image_id] = inst
        semantic[r.image_id] = inst if sem is None else sem   # boxes: the evaluator's own instance -> semantic rule
    out.mkdir(parents=True, exist_ok=True)
    write_coco_results(instances, inst_file)
    write_coco_results(semantic, sem_file)
    median = statistics.median(seconds)
    time_file.write_text(json.dumps(median))
    return instances, semantic, median


def score(val: RecordSet, instances: dict, semantic: dict) -> dict:
    report = evaluate(val, instances, thresholds=(0.5, 0.75))
    miou = semantic_miou(val, semantic)["miou"]
    return {"mAP@0.5": report["voc"]["mAP"]["0.5"], "mAP@0.75": report["voc"]["mAP"]["0.75"],
            "ABO": report["voc"]["abo"], "COCO AP": report["coco"]["AP"], "mIoU": miou,
            "predictions": sum(len(v) for v in instances.values())}


def reference_row() -> str:
    path = RESULTS / "reference.md"
    if path.is_file():
        return f"see [{path.name}]({path.name}) (fully supervised Mask R-CNN, masks of all 211 images)"
    return "not available: benchmarks/results/reference.md (helper `detectors`) is not on this branch yet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "wsis/configs/dasnet_cpu.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs/bench_dasnet")
    parser.add_argument("--val", type=Path, default=VAL_JSON)
    parser.add_argument("--ladder", default="25,5,all", help="mask budgets, comma-separated; the first trains the detector")
    parser.add_argument("--max-val", type=int, help="score only the first N val images (smoke runs; not the protocol)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, val = training_set(), load_dataset(args.val)
    if args.max_val:
        val = RecordSet(val.records[: args.max_val], val.categories, val.name)
    rows, diagnosis, first = {}, {}, None
    ladder = args.ladder.split(",")
    for budget in ladder:
        run = args.workdir / f"masks_{budget}"
        overrides = [f"data.masks_for={budget}", "device=cpu", *args.overrides]
        if first is not None:
            overrides.append(f"model.detector.weights={first / 'detector' / 'model.pt'}")
        start = time.perf_counter()
        predictor = dasnet.load(run) if (run / "method.json").is_file() else \
            dasnet.fit(train, config=args.config, overrides=overrides, workdir=run)
        meta = json.loads((run / "method.json").read_text())
        first = first or run
        if budget == ladder[0]:
            inst, sem, sec = predict(predictor, val, run / "pred_boxes", boxes=True)
            rows["boxes-as-masks"] = {**score(val, inst, sem), "s/image": sec, "masks": 0,
                                      "train_seconds": meta["train_seconds"]}
        inst, sem, sec = predict(predictor, val, run / "pred")
        n_masks = len(meta["mask_image_ids"])
        rows[f"DASNet, {n_masks} mask images"] = {**score(val, inst, sem), "s/image": sec, "masks": n_masks,
                                                  "train_seconds": meta["train_seconds"]}
        print(f"{budget}: {rows[f'DASNet, {n_masks} mask images']} ({time.perf_counter() - start:.0f} s)", flush=True)
    # Diagnosis (BENCHMARK.md): the segmentation module on ground-truth boxes, which the detector of
    # this CPU schedule is far from; separates what the masks add from what the detector loses.
    for budget in ladder:
        run = args.workdir / f"masks_{budget}"
        predictor = dasnet.load(run)
        n_masks = len(json.loads((run / "method.json").read_text())["mask_image_ids"])
        if budget == ladder[0]:
            inst, sem, sec = predict(predictor, val, run / "pred_oracle_boxes", boxes=True, oracle=True)
            diagnosis["boxes-as-masks, ground-truth boxes"] = {**score(val, inst, sem), "s/image": sec, "masks": 0}
        inst, sem, sec = predict(predictor, val, run / "pred_oracle", oracle=True)
        diagnosis[f"DASNet, {n_masks} mask images, ground-truth boxes"] = {**score(val, inst, sem), "s/image": sec,
                                                                           "masks": n_masks}
    command = "python benchmarks/bench_dasnet.py " + " ".join(sys.argv[1:])
    result = {"command": command, "commit": commit(), "config": str(args.config), "rows": rows, "diagnosis": diagnosis,
              "reference": reference_row(), "peak_rss_mib": peak_rss_mib(),
              "machine": "2 CPU cores shared with other jobs, no GPU"}
    lines = ["# DASNet supervision ladder (coco128 + coco-train83 boxes -> coco-val50)", "",
             f"Command: `{command}` (commit {result['commit']}, config `{Path(args.config).name}`).", "",
             "Schedule (dasnet_cpu.yaml, a deviation from the paper's 60K detector / 40K segmentation "
             "iterations of batch 32): detector 120 iterations of batch 8 with the Lite0 body frozen "
             "(rounded up to whole epochs by the trainer), each segmentation network 40 iterations of "
             "batch 8, the same for every mask budget; the detector is trained once and shared by all rows. "
             "Boxes-as-masks fills the same detector's boxes. Machine: 2 CPU cores shared with other jobs; "
             "s/image is the median over the 50 val images (detection + both segmentation outputs), "
             "train s counts only the stages a row trained itself.", "",
             "| row | mask images | mIoU | mAP^r@0.5 | mAP^r@0.75 | ABO | COCO AP | s/image | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for name, r in rows.items():
        lines.append(f"| {name} | {r['masks']} | {pct(r['mIoU'])} | {pct(r['mAP@0.5'])} | {pct(r['mAP@0.75'])} | "
                     f"{pct(r['ABO'])} | {pct(r['COCO AP'])} | {r['s/image']:.2f} | {r['train_seconds']:.0f} |")
    lines.append(f"| fully supervised Mask R-CNN | 211 | {reference_row()} | | | | | | |")
    lines += ["", "Diagnosis rows (ground-truth boxes of the val images given to the segmentation module; "
              "not benchmark numbers, BENCHMARK.md):", "",
              "| row | mask images | mIoU | mAP^r@0.5 | mAP^r@0.75 | ABO | COCO AP | s/image |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in diagnosis.items():
        lines.append(f"| {name} | {r['masks']} | {pct(r['mIoU'])} | {pct(r['mAP@0.5'])} | {pct(r['mAP@0.75'])} | "
                     f"{pct(r['ABO'])} | {pct(r['COCO AP'])} | {r['s/image']:.2f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_write(RESULTS / "dasnet.json") as f:
        json.dump(result, f, indent=2)
    with atomic_write(RESULTS / "dasnet.md") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
