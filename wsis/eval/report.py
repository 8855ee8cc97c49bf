"""One call for every metric of BENCHMARK.md, as a JSON-serialisable dict, and its text tables."""
from __future__ import annotations

from wsis.eval.evaluator import SUBSETS, Evaluator
from wsis.eval.inputs import Predictions, check_predictions, predictions_for
from wsis.structures import RecordSet

__all__ = ["SUBSETS", "evaluate", "format_table"]


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
    Per-class tables are keyed by category name; undefined values are ``None``. Every image of
    ``gt`` is scored (one without predictions has none). The one-shot form of :class:`Evaluator`.
    """
    evaluator = Evaluator(gt.categories, name=gt.name, subset=subset, coco=coco, detection=detection,
                          semantic=semantic, thresholds=thresholds)
    check_predictions(gt, preds, need_masks=True)
    for record in gt.records:
        evaluator.process(record, predictions_for(record, preds))
    return evaluator.evaluate()


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
