"""Method-agnostic stage diagnosis from a method's predictions alone (issue 11, BENCHMARK.md
"Diagnosis rows"; used by ``benchmarks/diagnose_predictions.py``).

Any method that writes instances with scores (PRM, MSER+SGPO, WISE, PDSL, Label-PEnet) is read as a
detector: what it says about an image's classes is which classes it predicts there.

* **tags**: the tag score of (image, class) is the highest score of a prediction of that class in the
  image, ``-inf`` (ranked last, one tied block) when there is none; the (image, class) pairs the method
  *predicts* are those with a prediction at or above the method's output threshold (every prediction
  when there is none).
* **oracle filter**: the predictions of the image's ground-truth classes only. A method cannot be
  given a class it did not predict, so this is an upper bound on what removing wrong tags gives, not
  the oracle-tag row of ``diagnose.py`` (which re-runs PRM's peak stage on the true classes).
* **tag-limited ceiling**: per non-crowd instance, its best pickable proposal IoU if the method
  predicts the instance's class in its image and 0 otherwise; the mean is the best ABO any choice of
  masks from the pool could reach under the method's tags. Without a pool, each instance counts 1:
  the fraction of instances whose class is predicted.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from wsis import masks as mask_ops
from wsis.eval.report import evaluate
from wsis.eval.subsets import voc20_ids
from wsis.eval.tags import tag_map, threshold_precision_recall
from wsis.masks import RLE
from wsis.structures import ImageRecord, Instances, RecordSet

# a finite threshold below every finite score: "every prediction counts" without letting -inf pass
EVERY_PREDICTION = float(np.finfo(np.float64).min)


def above_threshold(preds: Mapping[int, Instances], threshold: float | None) -> dict[int, Instances]:
    """Each image's predictions with score >= ``threshold`` (all of them when it is None)."""
    if threshold is None:
        return dict(preds)
    return {i: p.select(np.nonzero(p.scores >= threshold)[0]) for i, p in preds.items()}


def tag_scores(records: Sequence[ImageRecord], preds: Mapping[int, Instances], category_ids: Sequence[int]
               ) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) tag scores (max prediction score per image and class, -inf without one) and (N, C) 0/1
    ground-truth tags (``record.tags``), rows in ``records`` order, columns in ``category_ids`` order."""
    col = {int(c): k for k, c in enumerate(category_ids)}
    scores = np.full((len(records), len(col)), -np.inf)
    targets = np.zeros((len(records), len(col)), bool)
    for n, record in enumerate(records):
        for t in record.tags:
            if int(t) in col:
                targets[n, col[int(t)]] = True
        inst = preds.get(record.image_id)
        if inst is None:
            continue
        for label, score in zip(inst.labels, inst.scores):
            if int(label) in col:
                k = col[int(label)]
                scores[n, k] = max(scores[n, k], float(score))
    return scores, targets


def tag_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float | None) -> dict:
    """Tag mAP of the scores (classes with a positive image) and precision / recall of the pairs
    with a prediction at or above ``threshold`` (any prediction when None)."""
    tm, n = tag_map(scores, targets)
    thr = EVERY_PREDICTION if threshold is None else float(threshold)
    pr = threshold_precision_recall(scores, targets, thr)
    return {"tag_mAP": tm, "tag_classes": n, "tag_precision": pr["precision"], "tag_recall": pr["recall"],
            "tag_passed": pr["passed"], "tag_positives": pr["positives"]}


def oracle_filter(records: Iterable[ImageRecord], preds: Mapping[int, Instances]) -> dict[int, Instances]:
    """Each image's predictions of its ground-truth classes (``record.tags``) only."""
    out = {}
    for record in records:
        inst = preds.get(record.image_id)
        if inst is not None:
            out[record.image_id] = inst.select(np.nonzero(np.isin(inst.labels, list(record.tags)))[0])
    return out


def instances(record: ImageRecord) -> tuple[list[RLE], np.ndarray]:
    """The record's non-crowd ground-truth masks (RLE) and labels: the instances ABO averages over."""
    gt = record.gt
    if gt is None or len(gt) == 0:
        return [], np.zeros(0, np.int64)
    keep = ~record.crowd
    rles = gt.rles()
    return [m for m, k in zip(rles, keep) if k], gt.labels[keep]


def candidate_overlaps(record: ImageRecord, boxes: np.ndarray, masks: np.ndarray,
                       class_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate (xyxy box, (H, W) mask at the image's size, category id), the best box IoU and
    the best mask IoU with a ground-truth instance of its class in ``record`` (crowd ones included), 0
    where the image has none: how right a pseudo label (or any instance) is."""
    n = len(class_ids)
    gt = record.gt
    if n == 0 or gt is None or len(gt) == 0:
        return np.zeros(n), np.zeros(n)
    same = np.asarray(class_ids)[:, None] == np.asarray(gt.labels)[None]
    box_iou = mask_ops.box_iou(np.asarray(boxes, float).reshape(-1, 4), np.asarray(gt.boxes, float).reshape(-1, 4))
    mask_iou = mask_ops.iou(mask_ops.encode_many(np.asarray(masks, bool)), gt.rles())
    return np.where(same, box_iou, 0.0).max(axis=1), np.where(same, mask_iou, 0.0).max(axis=1)


def predicted_instance_mask(record: ImageRecord, preds: Mapping[int, Instances]) -> np.ndarray:
    """Per non-crowd instance of ``record``: whether ``preds`` has a prediction of its class in the image
    (pass the thresholded predictions)."""
    _, labels = instances(record)
    inst = preds.get(record.image_id)
    predicted = np.zeros(0, np.int64) if inst is None else np.unique(inst.labels)
    return np.isin(labels, predicted)


def pickable(areas: np.ndarray, image_area: float, size_limit: tuple[float, float] | None,
             proposal_count: int | None) -> np.ndarray:
    """Which proposals a retrieval may pick: area in [lo, hi) of the image area (PRM's size limits,
    none when ``size_limit`` is None) and among the first ``proposal_count``."""
    ok = np.ones(len(areas), bool)
    if size_limit is not None:
        lo, hi = size_limit
        ok &= (areas >= lo * image_area) & (areas < hi * image_area)
    if proposal_count is not None:
        ok[proposal_count:] = False
    return ok


def pool_best_iou(record: ImageRecord, proposals: Sequence[RLE], size_limit: tuple[float, float] | None = None,
                  proposal_count: int | None = None) -> np.ndarray:
    """Per non-crowd instance, the best IoU of a pickable proposal (0 without one): the pool's ceiling
    (the same rule as ``benchmarks/diagnose.py``'s column c)."""
    gt_rles, _ = instances(record)
    if not gt_rles or not len(proposals):
        return np.zeros(len(gt_rles))
    proposals = list(proposals)
    ok = pickable(mask_ops.area(proposals), record.height * record.width, size_limit, proposal_count)
    iou = mask_ops.iou(proposals, gt_rles)
    return np.where(ok[:, None], iou, 0.0).max(axis=0)


def ceiling_summary(best_iou: np.ndarray | None, predicted: np.ndarray) -> dict:
    """Pool ceiling ABO and recall@0.5, and the tag-limited ceiling: the mean over instances of the best
    IoU where the class is predicted, 0 elsewhere (``best_iou`` None: 1 where predicted, the fraction of
    instances whose class the method predicts)."""
    predicted = np.asarray(predicted, bool)
    n = len(predicted)
    out = {"instances": n, "class_predicted": float(predicted.mean()) if n else 0.0}
    if best_iou is None:
        out["tag_limited_ABO"] = out["class_predicted"]
        return out
    best_iou = np.asarray(best_iou, float)
    out.update({"ABO": float(best_iou.mean()) if n else 0.0,
                "recall_0.5": float((best_iou >= 0.5).mean()) if n else 0.0,
                "tag_limited_ABO": float(np.where(predicted, best_iou, 0.0).mean()) if n else 0.0})
    return out


def summarise(gt: RecordSet, preds: Mapping[int, Instances], *, threshold: float | None = None,
              best_iou: Mapping[int, np.ndarray] | None = None, subset: str | None = None) -> dict:
    """One row of the diagnosis on all of ``gt``'s classes (``subset=None``) or the VOC20 subset.

    ``preds``: every image's predictions as the method wrote them; ``threshold``: the method's output
    threshold (predictions below it are not the method's output: they count for the tag mAP's ranking
    only); ``best_iou``: per image id, :func:`pool_best_iou` of its non-crowd instances (None: no pool).
    Keys: the tag metrics of :func:`tag_metrics`; ``predicted`` and ``oracle_filter``: VOC-protocol
    mAP^r at 0.25/0.5/0.7/0.75, ABO, prediction count (and COCO AP / AP50 / AP75 for ``predicted``);
    ``ceiling``: :func:`ceiling_summary`.
    """
    if subset not in (None, "voc20"):
        raise ValueError(f"unknown subset {subset!r} (None or 'voc20')")
    ids = sorted(int(c) for c in gt.categories) if subset is None else voc20_ids(gt.categories)
    scores, targets = tag_scores(gt.records, preds, ids)
    row = tag_metrics(scores, targets, threshold)
    output = above_threshold(preds, threshold)
    for kind, kept in (("predicted", output), ("oracle_filter", oracle_filter(gt.records, output))):
        full = evaluate(gt, kept, subset=subset, coco=kind == "predicted")
        m = full["voc"]
        row[kind] = {"mAP_0.25": m["mAP"]["0.25"], "mAP_0.5": m["mAP"]["0.5"], "mAP_0.7": m["mAP"]["0.7"],
                     "mAP_0.75": m["mAP"]["0.75"], "ABO": m["abo"],
                     "n_pred": int(sum(int(np.isin(p.labels, ids).sum()) for p in kept.values()))}
        if kind == "predicted":
            row[kind]["coco"] = {k: full["coco"].get(k) for k in ("AP", "AP50", "AP75")}
    predicted, best = [], []
    for record in gt.records:
        _, labels = instances(record)
        keep = np.isin(labels, ids)
        predicted.append(predicted_instance_mask(record, output)[keep])
        if best_iou is not None:
            best.append(np.asarray(best_iou[record.image_id], float)[keep])
    predicted_all = np.concatenate(predicted) if predicted else np.zeros(0, bool)
    best_all = (np.concatenate(best) if best else np.zeros(0)) if best_iou is not None else None
    row["ceiling"] = ceiling_summary(best_all, predicted_all)
    return row
