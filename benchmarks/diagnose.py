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

``--stage-cache DIR`` keeps each image's peak stage (class scores, the top ``--cache-max-peaks`` peaks
per class with their values and PRMs, the class maps) on disk, keyed by the class layer's weights,
the image, the thresholds and the peak rule: rows that differ only in the test stage (peaks per class,
relative peak threshold, retrieval score, NMS; ``key=value`` overrides) then skip the backward passes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, VAL_JSON, commit, peak_rss_mib, upsert_row

from wsis import masks as mask_ops
from wsis.cues.peak_backprop import peak_response_maps
from wsis.cues.peaks import select_peak_indices
from wsis.cues.prm import peak_stimulation
from wsis.data import load_dataset
from wsis.data.images import load_image
from wsis.eval import diagnosis, evaluate
from wsis.eval.subsets import voc20_ids
from wsis.eval.tags import tag_map, threshold_precision_recall
from wsis.proposals.fill import with_fill
from wsis.proposals.retrieval import contour_masks, proposal_scores, select_instances
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


def peak_stage_key(pred, record, thresholds: np.ndarray, max_peaks: int | None) -> str:
    """Everything the peak stage of one image depends on: the trained weights, the image, the
    thresholds, the classifier's resolution, the peak rule (without the per-class cap, which is
    applied afterwards from the values: the top-k of a class are a prefix of its top-(k+n))."""
    import hashlib

    cfg = pred.cfg
    h = hashlib.sha1()
    h.update(pred.model.classifier.weight.detach().cpu().numpy().tobytes())
    h.update(Path(record.path).read_bytes())
    h.update(np.asarray(thresholds, np.float64).tobytes())
    sizes = (cfg.data.image_size,) if pred.localisation_size() == cfg.data.image_size else (
        cfg.data.image_size, pred.localisation_size())  # the old key when localising at the training size
    h.update(repr(sizes + (cfg.test.peak_threshold, max_peaks, sorted(record.tags))).encode())
    return h.hexdigest()[:20]


def peak_stage(pred, record, image: np.ndarray, thresholds: np.ndarray, cache: Path | None,
               max_peaks: int | None) -> dict:
    """Class scores, the kept peaks (of the passed and the ground-truth classes, at most ``max_peaks``
    per class) with their CRM values and PRMs, and the class maps of the peaks' classes at the
    classifier's resolution; read from ``cache`` when it has them (the backward passes are the cost)."""
    path = None
    if cache is not None:
        path = cache / f"{record.image_id}-{peak_stage_key(pred, record, thresholds, max_peaks)}.npz"
        if path.is_file():
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
    cfg = pred.cfg
    x = pred.prepare(image)
    cat_ids = np.asarray(pred.category_ids)
    gt_cols = np.isin(cat_ids, np.asarray(record.tags, dtype=np.int64))
    holder: dict = {}
    if pred.localisation_size() != cfg.data.image_size:  # test.image_size: classes decided at the training size
        holder["train_scores"] = pred.training_size_scores(image).cpu().numpy()

    def select(crm: torch.Tensor) -> torch.Tensor:
        scores = holder.get("train_scores")
        if scores is None:
            scores = peak_stimulation(crm, pred.model.win_size, pred.model.peak_filter)[0].cpu().numpy()
        holder["scores"] = scores
        passed = scores >= thresholds
        holder["passed"] = passed
        peaks, values = pred.model.find_peaks(crm)
        allowed = torch.from_numpy(passed | gt_cols).to(crm.device)
        idx = select_peak_indices(peaks[:, 1], values, allowed, cfg.test.peak_threshold, max_peaks)
        holder["values"] = values[idx].cpu().numpy()
        return peaks[idx]

    batched = cfg.test.peak_backprop == "batched" or (cfg.test.peak_backprop == "auto" and pred.device.type == "cuda")
    peaks, prms, crm = peak_response_maps(pred.model, x, select=select, batched=batched)
    s = x.shape[-1]
    peaks_np = peaks.cpu().numpy()
    used = np.unique(peaks_np[:, 1]) if len(peaks_np) else np.zeros(0, np.int64)
    class_maps = np.zeros((len(used), s, s), np.float32)
    if len(used):
        up = torch.nn.functional.interpolate(crm[torch.from_numpy(used)][None], size=(s, s), mode="bicubic",
                                             align_corners=False)[0]
        class_maps = up.cpu().numpy()
    out = {"scores": holder["scores"], "passed": holder["passed"], "gt_cols": gt_cols, "peaks": peaks_np,
           "values": holder["values"], "prms": prms.cpu().numpy().astype(np.float32), "used": used,
           "class_maps": class_maps, "crm_hw": np.asarray(crm.shape[-2:]), "size": np.asarray(s)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **out)
        tmp.replace(path)
    return out


def cap_peaks(stage: dict, max_per_class: int | None, relative: float | None = None) -> np.ndarray:
    """Indices of the stage's peaks kept with at most ``max_per_class`` per class (highest value first)
    and none below ``relative`` times its class's strongest (the same rule as inference: the stage
    holds each class's top peaks, so its strongest too)."""
    classes = torch.from_numpy(stage["peaks"][:, 1]) if len(stage["peaks"]) else torch.zeros(0, dtype=torch.long)
    values = torch.from_numpy(stage["values"])
    allowed = torch.ones(int(classes.max()) + 1 if len(classes) else 1, dtype=torch.bool)
    return select_peak_indices(classes, values, allowed, None, max_per_class, relative=relative).numpy()


def analyse_image(pred, record, thresholds: np.ndarray, cache: Path | None = None,
                  cache_max_peaks: int | None = None, memo: dict | None = None) -> dict:
    """Everything the rows need from one image. ``memo`` (a dict per image) keeps what does not depend
    on the retrieval settings (the image, its proposals at both resolutions, their IoU with the ground
    truth) across calls with several settings (benchmarks/tune_retrieval.py)."""
    cfg = pred.cfg
    memo = {} if memo is None else memo
    if "image" not in memo:
        memo["image"] = load_image(record.path)
    image = memo["image"]
    h, w = image.shape[:2]
    cache_max = cfg.test.max_peaks_per_class if cache is None else cache_max_peaks
    if cache_max is not None and cfg.test.max_peaks_per_class is not None and cfg.test.max_peaks_per_class > cache_max:
        raise SystemExit(f"max_peaks_per_class={cfg.test.max_peaks_per_class} > --cache-max-peaks {cache_max}")
    stage = peak_stage(pred, record, image, thresholds, cache, cache_max)
    keep = cap_peaks(stage, cfg.test.max_peaks_per_class, cfg.test.peak_relative_threshold)
    peaks_np, prms = stage["peaks"][keep], stage["prms"][keep]
    s = int(stage["size"])
    class_maps = np.zeros((len(pred.category_ids), s, s), np.float32)
    class_maps[stage["used"]] = stage["class_maps"]
    crm_hw = tuple(int(v) for v in stage["crm_hw"])
    cat_ids = np.asarray(pred.category_ids)
    gt_cols = stage["gt_cols"]
    holder = {"scores": stage["scores"], "passed": stage["passed"]}
    if "props" not in memo:
        memo["props"] = pred.proposals(record)
    props = memo["props"]
    out = {"scores": holder["scores"], "passed": holder["passed"], "gt_cols": gt_cols}
    gt_rles, gt_labels = diagnosis.instances(record)
    # (c) ceiling among the proposals retrieval may pick (size limits)
    if "areas" not in memo:
        memo["areas"] = mask_ops.area(props.masks) if props.masks else np.zeros(0)
    areas = memo["areas"]
    pickable = diagnosis.pickable(areas, h * w, cfg.test.retrieval.size_limit, cfg.test.retrieval.proposal_count)
    if "iou" not in memo:
        memo["iou"] = (mask_ops.iou(props.masks, gt_rles) if gt_rles and props.masks
                       else np.zeros((len(areas), len(gt_rles))))
    iou = memo["iou"]
    best_iou = np.where(pickable[:, None], iou, 0).max(axis=0) if len(areas) else np.zeros(len(gt_rles))
    # peaked: instances with a peak of their class inside (set below): the ABO retrieval could reach
    # with these peaks if each picked its instance's best proposal
    out["ceiling"] = {"labels": gt_labels, "best_iou": best_iou, "peaked": np.zeros(len(gt_rles), bool)}
    out["preds"] = {}
    out["retrieval"] = []
    if len(peaks_np) == 0 or props.masks is None or len(props) == 0:
        for kind in ("predicted", "oracle"):
            out["preds"][kind] = Instances((h, w), masks=[])
        return out
    # keyed by the localisation size too: variants may differ in test.image_size
    if ("small", s) not in memo:
        memo[("small", s)] = mask_ops.decode_resized(props.masks, props.image_size, s, s)
    small = memo[("small", s)]
    contour_key = ("contours", s, cfg.test.retrieval.contour_width)
    if contour_key not in memo:
        memo[contour_key] = contour_masks(small, cfg.test.retrieval.contour_width)
    contours = memo[contour_key]
    # variants that differ only after scoring (NMS, the fill) share one scoring
    score_key = ("scores", s, repr(cfg.test.retrieval), cfg.test.max_peaks_per_class, cfg.test.peak_relative_threshold)
    if score_key not in memo:
        memo[score_key] = proposal_scores(prms, peaks_np[:, 1], class_maps, small, cfg.test.retrieval, contours)
    scores = memo[score_key]
    for kind, cols in (("predicted", holder["passed"]), ("oracle", gt_cols)):
        sel = np.flatnonzero(cols[peaks_np[:, 1]])
        if len(sel) == 0:
            out["preds"][kind] = Instances((h, w), masks=[])
            continue
        found = select_instances(scores[sel], prms[sel], peaks_np[sel, 1], small, cfg.test.retrieval.nms_threshold,
                                 merge=cfg.test.retrieval.merge_peak_response, class_aware=cfg.test.retrieval.class_aware_nms)
        index, picked, picked_scores = with_fill(found.proposal_index, found.peak_classes, found.scores,
                                                 peaks_np[sel, 1], class_maps, small, cfg.test.fill,
                                                 cfg.test.retrieval.size_limit)  # as PRMPredictor.predict
        chosen = [props.masks[i] for i in index]
        labels = cat_ids[picked] if len(chosen) else np.zeros(0, np.int64)
        out["preds"][kind] = Instances((h, w), boxes=mask_ops.to_bbox(chosen), labels=labels,
                                       scores=picked_scores, masks=chosen)
    # (d) per oracle peak, before NMS
    if "gt_dense" not in memo:
        memo["gt_dense"] = mask_ops.decode_many(gt_rles, (h, w)) if gt_rles else np.zeros((0, h, w), bool)
    gt_dense = memo["gt_dense"]
    gt_area = gt_dense.reshape(len(gt_dense), -1).sum(axis=1)
    coords = peak_image_coords(peaks_np, crm_hw, pred.model, s, (h, w))
    for k in np.flatnonzero(gt_cols[peaks_np[:, 1]]):
        label = cat_ids[peaks_np[k, 1]]
        y, xx = coords[k]
        inside = [g for g in range(len(gt_rles)) if gt_labels[g] == label and gt_dense[g, y, xx]]
        entry = {"label": int(label), "inside": bool(inside)}
        out["ceiling"]["peaked"][inside] = True
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
    peaked = np.concatenate([p["ceiling"]["peaked"][np.isin(p["ceiling"]["labels"], list(keep_ids))]
                             for p in per_image])
    # the ceiling of the instances whose class passed the class threshold in their image: the best ABO
    # any mask choice could reach with the method's own tags and this pool
    col_of = {int(c): i for i, c in enumerate(cat_ids)}
    tagged = np.concatenate([
        np.asarray([bool(p["passed"][col_of[int(lab)]]) for lab in p["ceiling"]["labels"]], bool)[
            np.isin(p["ceiling"]["labels"], list(keep_ids))] for p in per_image])
    row["ceiling"] = diagnosis.ceiling_summary(best, tagged)  # ABO, recall@0.5, tag-limited ABO
    row["ceiling"].update(peaked=float(peaked.mean()) if len(best) else 0.0,
                          peak_bound_ABO=float((best * peaked).mean()) if len(best) else 0.0)
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


def markdown(rows: dict, out: Path = RESULTS) -> str:
    """The table of ``rows``, then the hand-written reading ``<out>_reading.md`` when there is one."""
    where = "coco-val50" if out.name == "diagnose" else f"the images of {out.name}.json's commands (--val)"
    lines = [f"# Stage-by-stage diagnosis on {where} (issue 11)", "",
             "Rows are analysis, not benchmark numbers: *oracle tags* gives the ground-truth tags at test time. "
             f"Each row's command is in `{out.name}.json`. Columns: (a) tag mAP of the class scores, precision / "
             "recall of the (image, class) pairs passing the class threshold; real mAP^r@0.25 / @0.5 / ABO with the "
             "predicted tags; (b) the same with oracle tags; (c) proposal ceiling: ABO and recall@0.5 of the best "
             "pickable proposal per instance, and the same over the instances whose class passed the class threshold in "
             "their image (0 for the others: the best ABO reachable with the predicted tags and this pool); (d) peaks of GT classes inside an instance of their class, how often "
             "retrieval picks that instance's best proposal, the mean IoU lost when not, mean picked / best IoU, "
             "median picked-area / instance-area; instances with a peak of their class inside and the *peak bound*: "
             "the ABO if each of them got its best pickable proposal and the others nothing (rows measured before "
             "this column: -).", ""]
    head = ("| row | classes | (a) tag mAP | (a) P / R at thr | mAP^r .25 / .5 / ABO | (b) oracle .25 / .5 / ABO | "
            "(c) ceiling ABO / R@.5 | (c) ceiling of the passed tags' instances | (d) in inst. | (d) picks best | (d) IoU lost | (d) picked / best IoU | "
            "(d) area ratio | (d) peaked inst. / peak bound ABO |")
    lines += [head, "|" + "---|" * 14]
    for name, r in rows.items():
        for subset in [k for k in ("all80", "voc20") if k in r]:
            s = r[subset]
            p, o, c, d = s["predicted"], s["oracle"], s["ceiling"], s["retrieval"]
            lines.append(
                f"| {name} | {subset} | {pct(s['tag_mAP'])} ({s['tag_classes']}) | {pct(s['tag_precision'])} / "
                f"{pct(s['tag_recall'])} ({s['tag_passed']} pass) | {pct(p['mAP_0.25'])} / {pct(p['mAP_0.5'])} / "
                f"{pct(p['ABO'])} | {pct(o['mAP_0.25'])} / {pct(o['mAP_0.5'])} / {pct(o['ABO'])} | "
                f"{pct(c['ABO'])} / {pct(c['recall_0.5'])} | "
                f"{pct(c['tag_limited_ABO']) if 'tag_limited_ABO' in c else '-'} | {pct(d['inside_instance'])} of {d['peaks']} | "
                f"{pct(d['picks_best_rate'])} | {pct(d['iou_lost_when_not'])} | {pct(d['picked_iou'])} / "
                f"{pct(d['best_iou'])} | {d['median_area_ratio']:.2f} | "
                f"{pct(c['peaked']) if 'peaked' in c else '-'} / "
                f"{pct(c['peak_bound_ABO']) if 'peak_bound_ABO' in c else '-'} |")
    notes = [r.get("note") for r in rows.values() if r.get("note")]
    if notes:
        lines += ["", "Notes:", ""] + [f"- **{n}**: {r['note']}" for n, r in rows.items() if r.get("note")]
    reading = out.parent / f"{out.name}_reading.md"
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
    parser.add_argument("--stage-cache", type=Path, help="folder caching each image's peak stage (scores, peaks, "
                        "PRMs, class maps): retrieval variants of one trained run then skip the backward passes")
    parser.add_argument("--cache-max-peaks", type=int, default=16,
                        help="peaks per class the stage cache holds (>= max_peaks_per_class of every variant)")
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
        per_image.append(analyse_image(pred, record, thresholds, args.stage_cache, args.cache_max_peaks))
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
    # synthetic scenes (the demo's) have no VOC class: all classes only
    for subset in ("all80", "voc20") if voc20_ids(val.categories) else ("all80",):
        row[subset] = summarise(per_image, subset_gt, val.categories, cat_ids, thresholds,
                                None if subset == "all80" else "voc20")
    print(upsert_row(args.out, args.name, row, markdown))


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
