"""Stage-by-stage diagnosis of an image-tag method on coco-val50 (issue 11, BENCHMARK.md "Diagnosis rows").

For a trained PRM-style predictor (PRM; MSER+SGPO and WISE share its peak + retrieval stages), per
row of ``benchmarks/results/diagnose.md``, on all 80 classes and on the VOC20 subset:

(a) **tags**: image-level tag mAP of the class scores (peak stimulation), and precision / recall of
    the (image, class) pairs that pass the class threshold the predictor uses;
(b) **oracle tags** (analysis only, never a benchmark number): the ground-truth tags replace the
    class threshold; mAP^r@0.25/0.5 and ABO then measure localisation alone. The same numbers with
    the predicted tags are the method's real score;
(c) **proposal ceiling**: the best proposal per ground-truth instance (class-agnostic pool, within
    the retrieval's size limits): ABO and recall@0.5;
(d) **retrieval**: for each peak of a ground-truth class (oracle pass, before NMS) that falls inside
    an instance of its class (the smallest such instance), whether retrieval picked the best available
    proposal for that instance (highest IoU among those it may pick) and the mean IoU lost when it
    did not; also the picked and best IoU, and the picked mask's area over the instance's area.

Each run adds or replaces its row (``--name``) in ``diagnose.json`` and rewrites ``diagnose.md``.

    python benchmarks/diagnose.py --workdir runs/prm_baseline --name "PRM baseline" [--thresholds T.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, VAL_JSON, commit, peak_rss_mib

from wsis import masks as mask_ops
from wsis.cues.peak_backprop import peak_response_maps
from wsis.cues.peaks import select_peaks
from wsis.cues.prm import peak_stimulation
from wsis.data import load_dataset
from wsis.data.images import atomic_write, load_image
from wsis.eval import evaluate
from wsis.eval.subsets import voc20_ids
from wsis.eval.tags import tag_map, threshold_precision_recall
from wsis.proposals.retrieval import proposal_scores, select_instances
from wsis.structures import Instances

RESULTS = ROOT / "benchmarks/results/diagnose"


def load_predictor(workdir: Path):
    meta = json.loads((workdir / "method.json").read_text())
    method = meta["method"]
    if method != "prm":
        raise SystemExit(f"diagnose.py: method {method!r} has no adapter yet")
    from wsis.methods import prm as prm_method

    return prm_method.load(workdir)


def peak_image_coords(peaks: np.ndarray, crm_hw: tuple[int, int], model, size: int, hw: tuple[int, int]
                      ) -> np.ndarray:
    """(K, 2) (y, x) pixel of the original image under each peak of the upsampled CRM."""
    f = model.sub_pixel_factor
    fh, fw = (crm_hw[0] - 1) / f + 1 if f > 1 else crm_hw[0], (crm_hw[1] - 1) / f + 1 if f > 1 else crm_hw[1]
    # align_corners upsampling: CRM pixel i sits at feature coordinate i * (n - 1) / (N - 1)
    fy = peaks[:, 2] * (round(fh) - 1) / max(crm_hw[0] - 1, 1)
    fx = peaks[:, 3] * (round(fw) - 1) / max(crm_hw[1] - 1, 1)
    stride = model.backbone.stride
    ys = np.clip(((fy + 0.5) * stride) * hw[0] / size, 0, hw[0] - 1).astype(int)
    xs = np.clip(((fx + 0.5) * stride) * hw[1] / size, 0, hw[1] - 1).astype(int)
    return np.stack([ys, xs], axis=1)


def analyse_image(pred, record, thresholds: np.ndarray) -> dict:
    """Everything the rows need from one image."""
    cfg = pred.cfg
    image = load_image(record.path)
    h, w = image.shape[:2]
    x = pred.prepare(image)
    cat_ids = np.asarray(pred.category_ids)
    gt_cols = np.isin(cat_ids, np.asarray(record.tags, dtype=np.int64))
    holder: dict = {}

    def select(crm: torch.Tensor) -> torch.Tensor:
        scores = peak_stimulation(crm, pred.model.win_size, pred.model.peak_filter)[0]
        holder["scores"] = scores.cpu().numpy()
        passed = scores.cpu().numpy() >= thresholds
        holder["passed"] = passed
        peaks, values = pred.model.find_peaks(crm)
        allowed = torch.from_numpy(passed | gt_cols).to(crm.device)
        return select_peaks(peaks, values, allowed, cfg.test.peak_threshold, cfg.test.max_peaks_per_class)

    batched = cfg.test.peak_backprop == "batched" or (cfg.test.peak_backprop == "auto" and pred.device.type == "cuda")
    peaks, prms, crm = peak_response_maps(pred.model, x, select=select, batched=batched)
    s = x.shape[-1]
    class_maps = torch.nn.functional.interpolate(crm[None], size=(s, s), mode="bicubic", align_corners=False)[0]
    peaks_np, prms, class_maps = peaks.cpu().numpy(), prms.cpu().numpy(), class_maps.cpu().numpy()
    props = pred.proposals(record)
    out = {"scores": holder["scores"], "passed": holder["passed"], "gt_cols": gt_cols}
    gt = record.gt
    gt_keep = ~record.crowd if gt is not None else np.zeros(0, bool)
    gt_rles = [m for m, k in zip(gt.masks, gt_keep) if k] if gt is not None and len(gt) else []
    gt_labels = gt.labels[gt_keep] if gt is not None and len(gt) else np.zeros(0, np.int64)
    # (c) ceiling among the proposals retrieval may pick (size limits)
    areas = mask_ops.area(props.masks) if props.masks else np.zeros(0)
    lo, hi = cfg.test.retrieval.size_limit
    pickable = (areas >= lo * h * w) & (areas < hi * h * w)
    if cfg.test.retrieval.proposal_count is not None:
        pickable[cfg.test.retrieval.proposal_count:] = False
    iou = mask_ops.iou(props.masks, gt_rles) if gt_rles and props.masks else np.zeros((len(areas), len(gt_rles)))
    best_iou = np.where(pickable[:, None], iou, 0).max(axis=0) if len(areas) else np.zeros(len(gt_rles))
    out["ceiling"] = {"labels": gt_labels, "best_iou": best_iou}
    out["preds"] = {}
    out["retrieval"] = []
    if len(peaks_np) == 0 or props.masks is None or len(props) == 0:
        for kind in ("predicted", "oracle"):
            out["preds"][kind] = Instances((h, w), masks=[])
        return out
    small = mask_ops.resize_nearest(props.mask_array(), s, s)
    scores = proposal_scores(prms, peaks_np[:, 1], class_maps, small, cfg.test.retrieval)
    for kind, cols in (("predicted", holder["passed"]), ("oracle", gt_cols)):
        sel = np.flatnonzero(cols[peaks_np[:, 1]])
        if len(sel) == 0:
            out["preds"][kind] = Instances((h, w), masks=[])
            continue
        found = select_instances(scores[sel], prms[sel], peaks_np[sel, 1], small, cfg.test.retrieval.nms_threshold,
                                 merge=cfg.test.retrieval.merge_peak_response, class_aware=cfg.test.retrieval.class_aware_nms)
        chosen = [props.masks[i] for i in found.proposal_index]
        labels = cat_ids[found.peak_classes] if len(chosen) else np.zeros(0, np.int64)
        out["preds"][kind] = Instances((h, w), boxes=mask_ops.to_bbox(chosen), labels=labels,
                                       scores=found.scores, masks=chosen)
    # (d) per oracle peak, before NMS
    gt_dense = mask_ops.decode_many(gt_rles, (h, w)) if gt_rles else np.zeros((0, h, w), bool)
    gt_area = gt_dense.reshape(len(gt_dense), -1).sum(axis=1)
    coords = peak_image_coords(peaks_np, crm.shape[-2:], pred.model, s, (h, w))
    for k in np.flatnonzero(gt_cols[peaks_np[:, 1]]):
        label = cat_ids[peaks_np[k, 1]]
        y, xx = coords[k]
        inside = [g for g in range(len(gt_rles)) if gt_labels[g] == label and gt_dense[g, y, xx]]
        entry = {"label": int(label), "inside": bool(inside)}
        if inside and np.isfinite(scores[k]).any():
            g = min(inside, key=lambda i: gt_area[i])
            picked = int(np.argmax(scores[k]))
            best = float(best_iou[g])
            entry.update(picked_iou=float(iou[picked, g]), best_iou=best,
                         is_best=bool(iou[picked, g] >= best - 1e-9),
                         area_ratio=float(areas[picked] / max(gt_area[g], 1)))
        out["retrieval"].append(entry)
    return out


def summarise(per_image: list[dict], records, categories, cat_ids: np.ndarray, thresholds, subset: str | None) -> dict:
    cols = np.ones(len(cat_ids), bool) if subset is None else np.isin(cat_ids, voc20_ids(categories))
    keep_ids = set(cat_ids[cols].tolist())
    scores = np.stack([p["scores"] for p in per_image])[:, cols]
    targets = np.stack([p["gt_cols"] for p in per_image])[:, cols]
    tm, n = tag_map(scores, targets)
    pr = threshold_precision_recall(scores, targets, np.broadcast_to(thresholds, (len(cat_ids),))[cols])
    row = {"tag_mAP": tm, "tag_classes": n, "tag_precision": pr["precision"], "tag_recall": pr["recall"],
           "tag_passed": pr["passed"], "tag_positives": pr["positives"]}
    gt_set = records
    for kind in ("predicted", "oracle"):
        preds = {r.image_id: p["preds"][kind] for r, p in zip(records, per_image)}
        full = evaluate(gt_set, preds, subset=subset, coco=kind == "predicted")
        m = full["voc"]
        row[kind] = {"mAP_0.25": m["mAP"]["0.25"], "mAP_0.5": m["mAP"]["0.5"], "mAP_0.7": m["mAP"]["0.7"],
                     "mAP_0.75": m["mAP"]["0.75"], "ABO": m["abo"],
                     "n_pred": int(sum(len(v) for v in preds.values()))}
        if kind == "predicted":
            row[kind]["coco"] = {k: full["coco"].get(k) for k in ("AP", "AP50", "AP75")}
    best = np.concatenate([p["ceiling"]["best_iou"][np.isin(p["ceiling"]["labels"], list(keep_ids))]
                           for p in per_image])
    row["ceiling"] = {"ABO": float(best.mean()) if len(best) else 0.0,
                      "recall_0.5": float((best >= 0.5).mean()) if len(best) else 0.0, "instances": len(best)}
    peaks = [e for p in per_image for e in p["retrieval"] if e["label"] in keep_ids]
    scored = [e for e in peaks if "picked_iou" in e]
    missed = [e for e in scored if not e["is_best"]]
    row["retrieval"] = {
        "peaks": len(peaks), "inside_instance": len(scored) / len(peaks) if peaks else 0.0,
        "picks_best": len(scored) - len(missed), "picks_best_rate": (len(scored) - len(missed)) / len(scored) if scored else 0.0,
        "iou_lost_when_not": float(np.mean([e["best_iou"] - e["picked_iou"] for e in missed])) if missed else 0.0,
        "picked_iou": float(np.mean([e["picked_iou"] for e in scored])) if scored else 0.0,
        "best_iou": float(np.mean([e["best_iou"] for e in scored])) if scored else 0.0,
        "median_area_ratio": float(np.median([e["area_ratio"] for e in scored])) if scored else 0.0,
    }
    return row


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def markdown(rows: dict) -> str:
    lines = ["# Stage-by-stage diagnosis on coco-val50 (issue 11)", "",
             "Rows are analysis, not benchmark numbers: *oracle tags* gives the ground-truth tags at test time. "
             "Each row's command is in `diagnose.json`. Columns: (a) tag mAP of the class scores, precision / "
             "recall of the (image, class) pairs passing the class threshold; real mAP^r@0.25 / @0.5 / ABO with the "
             "predicted tags; (b) the same with oracle tags; (c) proposal ceiling: ABO and recall@0.5 of the best "
             "pickable proposal per instance; (d) peaks of GT classes inside an instance of their class, how often "
             "retrieval picks that instance's best proposal, the mean IoU lost when not, mean picked / best IoU, "
             "median picked-area / instance-area.", ""]
    head = ("| row | classes | (a) tag mAP | (a) P / R at thr | mAP^r .25 / .5 / ABO | (b) oracle .25 / .5 / ABO | "
            "(c) ceiling ABO / R@.5 | (d) in inst. | (d) picks best | (d) IoU lost | (d) picked / best IoU | "
            "(d) area ratio |")
    lines += [head, "|" + "---|" * 12]
    for name, r in rows.items():
        for subset in ("all80", "voc20"):
            s = r[subset]
            p, o, c, d = s["predicted"], s["oracle"], s["ceiling"], s["retrieval"]
            lines.append(
                f"| {name} | {subset} | {pct(s['tag_mAP'])} ({s['tag_classes']}) | {pct(s['tag_precision'])} / "
                f"{pct(s['tag_recall'])} ({s['tag_passed']} pass) | {pct(p['mAP_0.25'])} / {pct(p['mAP_0.5'])} / "
                f"{pct(p['ABO'])} | {pct(o['mAP_0.25'])} / {pct(o['mAP_0.5'])} / {pct(o['ABO'])} | "
                f"{pct(c['ABO'])} / {pct(c['recall_0.5'])} | {pct(d['inside_instance'])} of {d['peaks']} | "
                f"{pct(d['picks_best_rate'])} | {pct(d['iou_lost_when_not'])} | {pct(d['picked_iou'])} / "
                f"{pct(d['best_iou'])} | {d['median_area_ratio']:.2f} |")
    notes = [r.get("note") for r in rows.values() if r.get("note")]
    if notes:
        lines += ["", "Notes:", ""] + [f"- **{n}**: {r['note']}" for n, r in rows.items() if r.get("note")]
    reading = RESULTS.parent / "diagnose_reading.md"
    return "\n".join(lines) + "\n" + ("\n" + reading.read_text() if reading.is_file() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--note", default="")
    parser.add_argument("--thresholds", type=Path, help="JSON {'thresholds': [per class]} (calibrated on training images)")
    parser.add_argument("--val", type=Path, default=VAL_JSON)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="test.retrieval.KEY=VALUE etc. applied to the loaded config")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pred = load_predictor(args.workdir)
    if args.overrides:
        pred.cfg = _apply(pred.cfg, args.overrides)
        pred.proposal_cache = pred.cfg.proposals.cache(args.workdir)
    if args.thresholds:
        thresholds = np.asarray(json.loads(args.thresholds.read_text())["thresholds"], float)
    else:
        thresholds = np.asarray(pred.class_thresholds(), float)
    val = load_dataset(args.val)
    records = list(val)[: args.limit]
    started = time.perf_counter()
    per_image, seconds = [], []
    for i, record in enumerate(records):
        t0 = time.perf_counter()
        per_image.append(analyse_image(pred, record, thresholds))
        seconds.append(time.perf_counter() - t0)
        print(f"  {i + 1}/{len(records)} image {record.image_id}: {time.perf_counter() - started:.0f} s", file=sys.stderr,
              flush=True)
    subset_gt = val.subset([r.image_id for r in records])
    cat_ids = np.asarray(pred.category_ids)
    row = {"command": "python benchmarks/diagnose.py " + " ".join(sys.argv[1:]), "commit": commit(),
           "workdir": str(args.workdir), "note": args.note, "seconds": time.perf_counter() - started,
           "images": len(records), "median_s_per_image": float(np.median(seconds)),
           "peak_rss_mib": peak_rss_mib(),
           "train_seconds": json.loads((args.workdir / "method.json").read_text()).get("train_seconds")}
    for subset in ("all80", "voc20"):
        row[subset] = summarise(per_image, subset_gt, val.categories, cat_ids, thresholds,
                                None if subset == "all80" else "voc20")
    path = args.out.with_suffix(".json")
    rows = json.loads(path.read_text()) if path.is_file() else {}
    rows[args.name] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        json.dump(rows, f, indent=2)
    text = markdown(rows)
    with atomic_write(args.out.with_suffix(".md")) as f:
        f.write(text)
    print(text)


def _apply(cfg, overrides: list[str]):
    """key=value overrides on a loaded config (same syntax as the CLI)."""
    import tempfile

    import yaml

    from wsis.config import load_config, to_dict

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(to_dict(cfg), f)
    return load_config(type(cfg), f.name, overrides)


if __name__ == "__main__":
    main()
