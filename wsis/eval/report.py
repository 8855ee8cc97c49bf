"""One call for every metric of BENCHMARK.md, as a JSON-serialisable dict, and its text tables."""
from __future__ import annotations

from typing import Mapping

from wsis.errors import InputError
from wsis.eval.coco_protocol import coco_bbox_eval, coco_segm_eval
from wsis.eval.detection import corloc, detection_ap
from wsis.eval.inputs import Predictions, check_predictions, evaluated_classes
from wsis.eval.instance import evaluate_instances
from wsis.eval.semantic import semantic_miou
from wsis.eval.subsets import restrict, voc20_ids
from wsis.structures import RecordSet

SUBSETS = ("voc20",)


def _named(table: Mapping[int, object], categories: Mapping[int, str]) -> dict[str, object]:
    """Per-class table keyed by category name instead of id (id as text when unnamed)."""
    return {categories.get(int(c), str(c)): v for c, v in table.items()}


def _voc_section(gt: RecordSet, preds: Predictions, thresholds: tuple[float, ...]) -> dict:
    res = evaluate_instances(gt, preds, thresholds=thresholds)
    names = gt.categories
    per_class: dict[int, dict] = {}
    for c, aps in res["per_class_ap"].items():
        per_class.setdefault(c, {}).update({f"AP@{t}": v for t, v in aps.items()})
    for c, abo in res["per_class_abo"].items():
        per_class.setdefault(c, {})["ABO"] = abo
    counts = dict(res["counts"])
    counts["predictions_per_class"] = _named(counts["predictions_per_class"], names)
    counts["positives_per_class"] = _named(counts["positives_per_class"], names)
    return {
        "mAP": res["mAP"],
        "abo": res["abo"],
        "abo_agnostic": res["abo_agnostic"],
        "counts": counts,
        "per_class": _named(dict(sorted(per_class.items())), names),
    }


def _coco_section(res: dict, categories: Mapping[int, str]) -> dict:
    out = {k: v for k, v in res.items() if k != "per_class_ap"}
    out["per_class"] = _named(res["per_class_ap"], categories)
    return out


def _detection_section(gt: RecordSet, preds: Predictions, coco: bool) -> dict:
    det = detection_ap(gt, preds)
    loc = corloc(gt, preds)
    out = {
        "mAP@0.5": det["mAP"],
        "per_class": _named(det["per_class_ap"], gt.categories),
        "corloc": loc["corloc"],
        "corloc_per_class": _named(loc["per_class"], gt.categories),
    }
    if coco:
        out["coco_bbox"] = _coco_section(coco_bbox_eval(gt, preds), gt.categories)
    return out


def _semantic_section(gt: RecordSet, preds: Predictions) -> dict:
    res = semantic_miou(gt, preds)
    return {
        "miou": res["miou"],
        "background_iou": res["background_iou"],
        "pixel_accuracy": res["pixel_accuracy"],
        "per_class": _named(res["per_class_iou"], gt.categories),
    }


def evaluate(
    gt: RecordSet,
    preds: Predictions,
    *,
    subset: str | None = None,
    coco: bool = True,
    detection: bool = False,
    semantic: bool = False,
    thresholds: tuple[float, ...] = (0.25, 0.5, 0.7, 0.75),
) -> dict:
    """All requested metrics: ``{"voc": ..., "coco": ..., "detection": ..., "semantic": ...}``.

    ``subset="voc20"`` first drops every class outside the 20 VOC classes from both sides.
    Per-class tables are keyed by category name; undefined values are ``None``.
    """
    if subset is not None and subset not in SUBSETS:
        raise InputError("subset", f"unknown subset {subset!r}; choose from {', '.join(SUBSETS)}")
    check_predictions(gt, preds, need_masks=True)
    if subset == "voc20":
        ids = voc20_ids(gt.categories)
        if not ids:
            raise InputError("subset", f"none of the 20 VOC classes is among the categories of {gt.name!r}")
        gt, preds = restrict(gt, preds, ids)
    report: dict = {
        "dataset": gt.name,
        "subset": subset or "all",
        "images": len(gt.records),
        "category_ids": evaluated_classes(gt, None),
        "voc": _voc_section(gt, preds, tuple(thresholds)),
    }
    if coco:
        report["coco"] = _coco_section(coco_segm_eval(gt, preds), gt.categories)
    if detection:
        report["detection"] = _detection_section(gt, preds, coco)
    if semantic:
        report["semantic"] = _semantic_section(gt, preds)
    return report


def _fmt(value: object) -> str:
    """Percent with one decimal; '-' for undefined."""
    return "-" if value is None else f"{100 * float(value):.1f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])


def _summary_rows(report: dict) -> list[list[str]]:
    voc = report["voc"]
    rows = [[f"mAP^r@{t} (VOC)", _fmt(v)] for t, v in voc["mAP"].items()]
    rows += [["ABO", _fmt(voc["abo"])], ["ABO (class-agnostic)", _fmt(voc["abo_agnostic"])]]
    if "coco" in report:
        rows += [[f"COCO segm {k}", _fmt(report["coco"][k])] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
    if "detection" in report:
        det = report["detection"]
        rows += [["box mAP@0.5 (VOC)", _fmt(det["mAP@0.5"])], ["CorLoc", _fmt(det["corloc"])]]
        if "coco_bbox" in det:
            rows += [["COCO bbox AP", _fmt(det["coco_bbox"]["AP"])]]
    if "semantic" in report:
        rows += [["semantic mIoU", _fmt(report["semantic"]["miou"])]]
    return rows


def format_table(report: dict) -> str:
    """Plain-text summary table and per-class table (AP@0.5, ABO, COCO AP), values in percent."""
    title = f"{report['dataset'] or 'dataset'} ({report['subset']}, {report['images']} images), values in %"
    summary = _table(["metric", "value"], _summary_rows(report))
    voc_classes = report["voc"]["per_class"]
    coco_classes = report.get("coco", {}).get("per_class", {})
    headers = ["class", "AP@0.5", "ABO"] + (["COCO AP"] if "coco" in report else [])
    rows = []
    for name, values in voc_classes.items():
        row = [name, _fmt(values.get("AP@0.5")), _fmt(values.get("ABO"))]
        if "coco" in report:
            row.append(_fmt(coco_classes.get(name)))
        rows.append(row)
    return "\n\n".join([title, summary, _table(headers, rows) if rows else "(no ground-truth instances)"])
