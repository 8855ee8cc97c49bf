"""Stage diagnosis of any image-tag method from its predictions file (issue 11, BENCHMARK.md "Diagnosis rows").

``benchmarks/diagnose.py`` re-runs PRM's peak stage; this script needs only what ``wsis predict``
wrote (COCO results json, read like ``wsis evaluate`` reads it), so PRM, MSER+SGPO, WISE, PDSL and
Label-PEnet all get rows. Per row, on all classes and on the VOC20 subset (when the dataset has VOC
classes), the functions of ``wsis/eval/diagnosis.py``:

(a) **tags**: tag score of (image, class) = the highest score of a prediction of that class in the
    image (none: -inf, ranked last as one tied block: an empty file scores the mean positive rate, 5.0
    all80 / 8.6 VOC20 on coco-val50, not 0); tag mAP over the classes with a positive image; precision /
    recall of the (image, class) pairs with a prediction at or above ``--score-threshold`` (default:
    every prediction counts);
    **real**: VOC-protocol mAP^r@0.25/0.5 and ABO, COCO segm AP, of the predictions at or above the
    threshold (all of them by default: then the same numbers as ``wsis evaluate``);
(b) **oracle filter** (analysis only): the predictions of the image's ground-truth classes only. A
    method cannot be given a class it did not predict, so this is not diagnose.py's oracle-tag row:
    it removes wrong tags, it does not add missed ones;
(c) **pool ceiling** (``--proposals``): per non-crowd instance the best IoU of a proposal the method
    may pick (within the retrieval's size limits): ABO and recall@0.5;
    **tag-limited ceiling**: the same best IoU where the method predicts the instance's class in its
    image and 0 elsewhere, averaged over instances: the best ABO any choice of masks from the pool
    reaches under the method's tags. Without ``--proposals``, each predicted-class instance counts 1:
    the fraction of instances whose class is predicted (an upper bound of the ABO under those tags).
(d) retrieval loss needs the method's internals (peaks): PRM-style only, ``diagnose.py``.

Rows go to ``benchmarks/results/diagnose_methods.json`` (name -> row, with the command and commit)
and the table ``diagnose_methods.md``; ``diagnose.json`` is diagnose.py's.

Usage (from the repository root; the predictions of ``wsis predict --data GT --out PRED.json``):

    python benchmarks/diagnose_predictions.py --pred PRED.json --name "WISE (wise_reference_cpu)" \\
        [--gt GT.json (default coco-val50)] [--note TEXT] [--score-threshold T] \\
        [--proposals RUN|CONFIG [--size-limit LO HI] [--proposal-count N]] [--out benchmarks/results/diagnose_methods]

``--proposals`` names the pool: a trained workdir (its ``method.json`` config: ``proposals`` and, for
PRM-style methods, ``test.retrieval.size_limit`` / ``proposal_count``, or WISE's ``prm.test.retrieval``)
or a method config (name in ``wsis/configs`` or a YAML path; keys it does not set take no limit).
``--size-limit`` / ``--proposal-count`` override what it says. Proposals come from the project's
shared proposal cache (computed and stored for images it lacks).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from common import ROOT, VAL_JSON, commit, pct, peak_rss_mib, upsert_row

from wsis.data import load_dataset
from wsis.data.coco import load_coco_results
from wsis.eval.diagnosis import pool_best_iou, summarise
from wsis.eval.subsets import voc20_ids

RESULTS = ROOT / "benchmarks/results/diagnose_methods"


def _dig(tree: dict, dotted: str):
    node = tree
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def pool_settings(source: str) -> tuple[object, dict, tuple[float, float] | None, int | None]:
    """(ProposalConfig, where it came from, size limit, proposal count) of a workdir or a config."""
    from wsis.config import from_dict, read_yaml_config, resolve_config
    from wsis.proposals.config import ProposalConfig

    path = Path(source)
    if path.is_dir() and (path / "method.json").is_file():
        tree = json.loads((path / "method.json").read_text()).get("config", {})
        origin = {"workdir": str(path)}
    else:
        cfg_path = resolve_config(source)
        tree = read_yaml_config(cfg_path)
        origin = {"config": str(cfg_path)}
    proposals = from_dict(ProposalConfig, tree.get("proposals") or {}, str(source))
    retrieval = _dig(tree, "test.retrieval") or _dig(tree, "prm.test.retrieval") or {}
    limit = retrieval.get("size_limit")
    return proposals, origin, (tuple(float(v) for v in limit) if limit is not None else None), \
        retrieval.get("proposal_count")


def ceilings(records, proposals, size_limit, proposal_count) -> dict[int, np.ndarray]:
    """Per image id, the best pickable proposal IoU of each non-crowd instance (diagnose.py's (c))."""
    cache = proposals.cache(".")
    out, started = {}, time.perf_counter()
    for n, record in enumerate(records):
        props = proposals.get(cache, record.path)
        if props.masks is None:  # a box pool (selective search) has no mask ceiling; 0 would read as one
            raise SystemExit(f"--proposals: the {proposals.method} pool gives boxes, not masks, so it has no "
                             "mask ceiling; leave --proposals out")
        out[record.image_id] = pool_best_iou(record, props.masks, size_limit, proposal_count)
        print(f"  pool {n + 1}/{len(records)} image {record.image_id}: {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
    return out


def markdown(rows: dict, out: Path = RESULTS) -> str:
    lines = [
        f"# Stage diagnosis of every image-tag method from its predictions (issue 11): `{out.name}.json`", "",
        "Rows are analysis, not benchmark numbers (BENCHMARK.md, *Diagnosis rows*). Written by "
        "`benchmarks/diagnose_predictions.py` from a method's `wsis predict` file; each row's command, commit "
        "and settings are in the json. Columns:",
        "",
        "- **(a) tag mAP**: per (image, class) the highest score of a prediction of that class (none: ranked "
        "last); mean AP over the classes with a positive image (their number in brackets). The pairs without a "
        "prediction are one tied block at the end, whose positives still add recall at the block's precision: "
        "an empty predictions file scores the mean positive rate (5.0 all80, 8.6 VOC20 on coco-val50), not 0;",
        "- **(a) P / R**: precision / recall of the (image, class) pairs with a prediction at or above the "
        "method's output threshold (`thr`; `-`: every prediction counts), how many pairs pass and how many are true;",
        "- **real**: VOC-protocol mAP^r@0.25 / @0.5 / ABO of the predictions at or above `thr` (with `-`, the "
        "numbers of `wsis evaluate`), then COCO segm AP;",
        "- **(b) oracle filter**: the same with the predictions of classes absent from the image dropped. A "
        "method cannot be given a class it did not predict: missed tags stay missed (diagnose.py's oracle "
        "tags add them; this cannot);",
        "- **(c) pool ceiling**: ABO and recall@0.5 of the best pickable proposal per instance in the pool "
        "`--proposals` names (`-`: no pool given);",
        "- **tag-limited ceiling**: the pool ceiling's ABO with every instance whose class the method does not "
        "predict in its image counted 0 -- the best ABO any mask choice reaches under the method's tags; "
        "without a pool, the fraction of instances whose class is predicted (marked *no pool*). Ceiling minus "
        "tag-limited ceiling is the ABO the tag stage alone loses;",
        "- (d) retrieval loss needs the method's peaks: PRM-style rows of `diagnose.md` only.",
        "",
    ]
    head = ("| row | classes | thr | (a) tag mAP | (a) P / R (pairs) | real .25 / .5 / ABO | real COCO AP | "
            "(b) oracle filter .25 / .5 / ABO | (c) pool ceiling ABO / R@.5 | tag-limited ceiling ABO |")
    lines += [head, "|" + "---|" * 10]
    for name, r in rows.items():
        thr = "-" if r.get("score_threshold") is None else f"{r['score_threshold']:g}"
        for subset in [k for k in ("all", "voc20") if k in r]:
            s = r[subset]
            p, o, c = s["predicted"], s["oracle_filter"], s["ceiling"]
            label = f"all{r.get('classes', '')}" if subset == "all" else subset
            pool = f"{pct(c['ABO'])} / {pct(c['recall_0.5'])}" if "ABO" in c else "-"
            limited = pct(c["tag_limited_ABO"]) + ("" if "ABO" in c else " (no pool)")
            lines.append(
                f"| {name} | {label} | {thr} | {pct(s['tag_mAP'])} ({s['tag_classes']}) | {pct(s['tag_precision'])} / "
                f"{pct(s['tag_recall'])} ({s['tag_passed']} pass, {s['tag_positives']} true) | {pct(p['mAP_0.25'])} / "
                f"{pct(p['mAP_0.5'])} / {pct(p['ABO'])} | {pct(p['coco'].get('AP'))} | {pct(o['mAP_0.25'])} / "
                f"{pct(o['mAP_0.5'])} / {pct(o['ABO'])} | {pool} | {limited} |")
    notes = [(n, r["note"]) for n, r in rows.items() if r.get("note")]
    if notes:
        lines += ["", "Notes:", ""] + [f"- **{n}**: {note}" for n, note in notes]
    reading = out.parent / f"{out.name}_reading.md"  # written by hand from the rows, kept across reruns
    return "\n".join(lines) + "\n" + ("\n" + reading.read_text() if reading.is_file() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", type=Path, default=VAL_JSON, help="ground truth (default coco-val50)")
    parser.add_argument("--pred", type=Path, required=True, help="COCO results json of `wsis predict`")
    parser.add_argument("--name", required=True, help="the row's name (replaces a row of that name)")
    parser.add_argument("--note", default="")
    parser.add_argument("--score-threshold", type=float,
                        help="the method's output threshold (default: every prediction counts)")
    parser.add_argument("--proposals", help="the pool of the ceiling: a trained workdir or a method config")
    parser.add_argument("--size-limit", type=float, nargs=2, metavar=("LO", "HI"),
                        help="pickable proposal area, fractions of the image area (overrides --proposals')")
    parser.add_argument("--proposal-count", type=int, help="only the first N proposals are pickable")
    parser.add_argument("--out", type=Path, default=RESULTS, help="OUT.json and OUT.md (default %(default)s)")
    args = parser.parse_args()
    started = time.perf_counter()
    gt = load_dataset(args.gt, need_images=args.proposals is not None)
    results = load_coco_results(args.pred, gt)
    if results.note:
        print(results.note, file=sys.stderr)
    if len(results.image_ids) < len(gt):
        print(f"{len(results.image_ids)} of {len(gt)} images have predictions; the others are scored as "
              "finding nothing", file=sys.stderr)
    best_iou, pool = None, None
    if args.proposals:
        proposals, origin, size_limit, count = pool_settings(args.proposals)
        size_limit = tuple(args.size_limit) if args.size_limit else size_limit
        count = args.proposal_count if args.proposal_count is not None else count
        pool = {**origin, "method": proposals.method, "settings": proposals.settings,
                "size_limit": list(size_limit) if size_limit else None, "proposal_count": count}
        best_iou = ceilings(gt.records, proposals, size_limit, count)
    row = {"command": "python benchmarks/diagnose_predictions.py " + shlex.join(sys.argv[1:]), "commit": commit(),
           "gt": str(args.gt), "pred": str(args.pred), "note": args.note, "score_threshold": args.score_threshold,
           "pool": pool, "images": len(gt), "images_with_predictions": len(results.image_ids),
           "classes": len(gt.categories)}
    for subset in ("all", "voc20") if voc20_ids(gt.categories) else ("all",):
        row[subset] = summarise(gt, results.predictions, threshold=args.score_threshold, best_iou=best_iou,
                                subset=None if subset == "all" else subset)
    row["seconds"], row["peak_rss_mib"] = time.perf_counter() - started, peak_rss_mib()
    print(upsert_row(args.out, args.name, row, markdown))


if __name__ == "__main__":
    main()
