"""The metrics of BENCHMARK.md as a stream: :class:`Evaluator` takes one image's predictions at a
time (``reset / process(record, instances) / evaluate``, the shape of detectron2's
``DatasetEvaluator``), so prediction need not hold a dataset's outputs before scoring and can be
split across processes (each process's state is merged into the main one, or gathered under
``torch.distributed``). :func:`wsis.eval.evaluate` is the one-shot call over it.

The evaluator keeps each processed record and its predictions (masks as RLE, a few hundred bytes
an instance); the matching itself runs in :meth:`Evaluator.evaluate`, over exactly the code the
one-shot call used, so both give the same numbers.
"""
from __future__ import annotations

import sys
from typing import Mapping, Protocol, Sequence

from wsis.errors import InputError
from wsis.eval.coco_protocol import coco_bbox_eval, coco_segm_eval
from wsis.eval.detection import corloc, detection_ap
from wsis.eval.inputs import Predictions, evaluated_classes
from wsis.eval.instance import DEFAULT_THRESHOLDS, evaluate_instances
from wsis.eval.semantic import semantic_miou
from wsis.eval.subsets import restrict, voc20_ids
from wsis.structures import ImageRecord, Instances, RecordSet

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


def _metrics(gt: RecordSet, preds: Predictions, subset: str | None, coco: bool, detection: bool,
             semantic: bool, thresholds: tuple[float, ...]) -> dict:
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


class DatasetEvaluator(Protocol):
    """What a streaming evaluator does: forget, take one image's predictions, give the metrics."""

    def reset(self) -> None: ...

    def process(self, record: ImageRecord, instances: Instances) -> None: ...

    def evaluate(self) -> dict: ...


EvaluatorState = tuple[list[ImageRecord], dict[int, Instances]]


class Evaluator:
    """Every metric of :func:`wsis.eval.evaluate`, fed one image at a time.

    ``categories`` is the ground truth's ``{id: name}``; ``process`` checks each image's
    predictions at once (size, masks, a second call for the same image) so a bad predictor fails
    on its first image. Images never processed are not scored. For several processes: give each a
    share of the images, then either :meth:`merge` their :meth:`state` into one evaluator, or call
    :meth:`evaluate` on all ranks under ``torch.distributed`` (rank 0 gets the report, others ``{}``).
    """

    def __init__(self, categories: Mapping[int, str], *, name: str = "", subset: str | None = None,
                 coco: bool = True, detection: bool = False, semantic: bool = False,
                 thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> None:
        if subset is not None and subset not in SUBSETS:
            raise InputError("subset", f"unknown subset {subset!r}; choose from {', '.join(SUBSETS)}")
        if not thresholds or any(not 0 < float(t) <= 1 for t in thresholds):
            raise ValueError(f"IoU thresholds must lie in (0, 1], got {list(thresholds)}")
        self.categories = dict(categories)
        self.name = name
        self.options = dict(subset=subset, coco=coco, detection=detection, semantic=semantic,
                            thresholds=tuple(float(t) for t in thresholds))
        self.reset()

    def reset(self) -> None:
        self._records: list[ImageRecord] = []
        self._preds: dict[int, Instances] = {}

    def process(self, record: ImageRecord, instances: Instances) -> None:
        if record.image_id in self._preds:
            raise InputError("predictions", f"image {record.image_id} processed twice")
        if len(instances):
            if tuple(instances.image_size) != record.size:
                raise InputError("predictions", f"image {record.image_id}: predictions of size "
                                                f"{instances.image_size}, image is {record.size}")
            if not instances.has_masks:
                raise InputError("predictions", f"image {record.image_id}: predictions have no masks")
        self._records.append(record)
        self._preds[record.image_id] = instances.compact()

    def state(self) -> EvaluatorState:
        """What this evaluator has processed (picklable), for :meth:`merge` in another process."""
        return self._records, self._preds

    def merge(self, state: EvaluatorState) -> None:
        """Add the images another evaluator processed."""
        records, preds = state
        for record in records:
            self.process(record, preds[record.image_id])

    def evaluate(self) -> dict:
        """The report of :func:`wsis.eval.evaluate` over the processed images."""
        if _distributed():
            from wsis.engine.distributed import all_gather_object, get_rank

            states = all_gather_object(self.state())
            if get_rank() != 0:
                return {}
            self.reset()
            for state in states:
                self.merge(state)
        gt = RecordSet(list(self._records), self.categories, self.name)
        return _metrics(gt, self._preds, **self.options)


def _distributed() -> bool:
    """True inside an initialised process group; never imports torch itself (the CLI stays light)."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)
