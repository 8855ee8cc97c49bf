"""The method-agnostic diagnosis (wsis/eval/diagnosis.py, benchmarks/diagnose_predictions.py) on a
drawn case whose answers are worked out by hand.

Two 8 x 8 images, classes 1 ("a") and 2 ("b"); squares by rows/columns (end exclusive):

image 1, tags {a, b}: instance A1 (a) rows 0-4 cols 0-4; instance B1 (b) rows 4-8 cols 4-8
image 2, tags {a}:    instance A2 (a) rows 0-4 cols 4-8

predictions (score, class, mask):
image 1: 0.9 a rows 0-4 cols 0-2 (IoU 0.5 with A1); 0.3 a = A1 (IoU 1); nothing of b
image 2: 0.2 a = A2 (IoU 1); 0.8 b rows 4-8 cols 0-4 (b is not in image 2)

proposal pool:
image 1: P1 = A1 (16 px, IoU 1 with A1); P2 rows 4-8 cols 4-6 (8 px, IoU 0.5 with B1)
image 2: P3 rows 0-2 cols 4-8 (8 px, IoU 0.5 with A2)
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsis import masks as mask_ops
from wsis.eval import diagnosis as dg
from wsis.structures import ImageRecord, Instances, RecordSet

ROOT = Path(__file__).resolve().parents[1]


def box(r0, r1, c0, c1):
    m = np.zeros((8, 8), bool)
    m[r0:r1, c0:c1] = True
    return m


A1, B1, A2 = box(0, 4, 0, 4), box(4, 8, 4, 8), box(0, 4, 4, 8)


def inst(labels, scores, masks):
    return Instances((8, 8), labels=labels, scores=scores, masks=mask_ops.encode_many(np.stack(masks)))


@pytest.fixture
def case():
    gt = RecordSet([
        ImageRecord(1, "1.png", 8, 8, tags=(1, 2), gt=inst([1, 2], [1, 1], [A1, B1])),
        ImageRecord(2, "2.png", 8, 8, tags=(1,), gt=inst([1], [1], [A2])),
    ], {1: "a", 2: "b"}, "drawn")
    preds = {1: inst([1, 1], [0.9, 0.3], [box(0, 4, 0, 2), A1]),
             2: inst([1, 2], [0.2, 0.8], [A2, box(4, 8, 0, 4)])}
    pool = {1: mask_ops.encode_many(np.stack([A1, box(4, 8, 4, 6)])), 2: mask_ops.encode_many(box(0, 2, 4, 8)[None])}
    return gt, preds, pool


def test_tag_scores_map_and_precision_recall(case):
    gt, preds, _ = case
    scores, targets = dg.tag_scores(gt.records, preds, [1, 2])
    # image 1: a's best 0.9, b never predicted (-inf); image 2: a 0.2, b 0.8
    assert np.allclose(scores[:, 0], [0.9, 0.2]) and scores[0, 1] == -math.inf and np.isclose(scores[1, 1], 0.8)
    assert targets.tolist() == [[True, True], [True, False]]
    m = dg.tag_metrics(scores, targets, None)
    # class a: both positives ranked first -> AP 1; class b: the negative (0.8) above the positive
    # (-inf, ranked last) -> precision 1/2 at recall 1 -> AP 0.5; mean 0.75 over 2 classes
    assert m["tag_mAP"] == pytest.approx(0.75) and m["tag_classes"] == 2
    # every prediction counts: pairs (1,a), (2,a), (2,b) pass, 2 of them true, of 3 positives
    assert (m["tag_passed"], m["tag_precision"], m["tag_recall"]) == (3, pytest.approx(2 / 3), pytest.approx(2 / 3))
    # threshold 0.5: (1,a) 0.9 and (2,b) 0.8 pass; one true -> P 1/2, R 1/3
    m = dg.tag_metrics(scores, targets, 0.5)
    assert (m["tag_passed"], m["tag_precision"], m["tag_recall"]) == (2, pytest.approx(0.5), pytest.approx(1 / 3))
    assert m["tag_mAP"] == pytest.approx(0.75)  # the ranking does not depend on the threshold


def test_oracle_filter_drops_absent_classes_only(case):
    gt, preds, _ = case
    kept = dg.oracle_filter(gt.records, preds)
    # image 1 (tags a, b) keeps both of its a predictions; image 2 (tag a) loses its b prediction
    assert kept[1].labels.tolist() == [1, 1] and kept[1].scores.tolist() == pytest.approx([0.9, 0.3])
    assert kept[2].labels.tolist() == [1] and kept[2].scores.tolist() == pytest.approx([0.2])
    assert mask_ops.iou(kept[2].rles(), mask_ops.encode_many(A2[None]))[0, 0] == 1.0


def test_pool_ceiling_and_tag_limited_ceiling(case):
    gt, preds, pool = case
    best = {r.image_id: dg.pool_best_iou(r, pool[r.image_id]) for r in gt.records}
    assert best[1].tolist() == [1.0, 0.5] and best[2].tolist() == [0.5]  # A1, B1 | A2
    predicted = np.concatenate([dg.predicted_instance_mask(r, preds) for r in gt.records])
    assert predicted.tolist() == [True, False, True]  # b is never predicted in image 1
    c = dg.ceiling_summary(np.concatenate([best[1], best[2]]), predicted)
    # pool: (1 + 0.5 + 0.5) / 3; tag-limited: B1 counts 0 -> (1 + 0 + 0.5) / 3
    assert c["ABO"] == pytest.approx(2 / 3) and c["recall_0.5"] == 1.0
    assert c["tag_limited_ABO"] == pytest.approx(0.5) and c["class_predicted"] == pytest.approx(2 / 3)
    # at threshold 0.5 image 2's a (0.2) is no longer predicted: only A1 remains -> 1 / 3
    out = dg.above_threshold(preds, 0.5)
    predicted = np.concatenate([dg.predicted_instance_mask(r, out) for r in gt.records])
    assert predicted.tolist() == [True, False, False]
    assert dg.ceiling_summary(np.array([1.0, 0.5, 0.5]), predicted)["tag_limited_ABO"] == pytest.approx(1 / 3)
    # without a pool: the fraction of instances whose class is predicted
    assert dg.ceiling_summary(None, np.array([True, False, True]))["tag_limited_ABO"] == pytest.approx(2 / 3)


def test_pickable_size_limit_and_count(case):
    gt, _, pool = case
    r1 = gt.records[0]
    # size limit [0, 0.2) of 64 px = 12.8 px: P1 (16 px) may not be picked -> A1 0, B1 still 0.5
    assert dg.pool_best_iou(r1, pool[1], size_limit=(0.0, 0.2)).tolist() == [0.0, 0.5]
    # only the first proposal: B1 loses P2
    assert dg.pool_best_iou(r1, pool[1], proposal_count=1).tolist() == [1.0, 0.0]


def test_summarise_rows(case):
    gt, preds, pool = case
    best = {r.image_id: dg.pool_best_iou(r, pool[r.image_id]) for r in gt.records}
    row = dg.summarise(gt, preds, best_iou=best)
    assert row["tag_mAP"] == pytest.approx(0.75)
    # real: class a at 0.5: 0.9 TP (IoU 0.5 with A1), 0.3 FP (A1 taken), 0.2 TP -> AP 0.5 * 1 + 0.5 * 2/3;
    # class b: one positive, its only prediction is in image 2 -> 0; mAP (5/6 + 0) / 2
    assert row["predicted"]["mAP_0.5"] == pytest.approx(5 / 12)
    # ABO: A1 1 (the 0.3 mask), B1 0, A2 1
    assert row["predicted"]["ABO"] == pytest.approx(2 / 3) and row["predicted"]["n_pred"] == 4
    # the oracle filter drops the b prediction of image 2: same AP (b still 0), one prediction fewer
    assert row["oracle_filter"]["mAP_0.5"] == pytest.approx(5 / 12) and row["oracle_filter"]["n_pred"] == 3
    assert row["ceiling"]["tag_limited_ABO"] == pytest.approx(0.5) and row["ceiling"]["ABO"] == pytest.approx(2 / 3)
    # at threshold 0.5 the method's output is 0.9 a (image 1) and 0.8 b (image 2): A1 0.5, others 0
    row = dg.summarise(gt, preds, threshold=0.5, best_iou=best)
    assert row["predicted"]["ABO"] == pytest.approx(0.5 / 3) and row["predicted"]["n_pred"] == 2
    assert row["ceiling"]["tag_limited_ABO"] == pytest.approx(1 / 3)
    assert dg.summarise(gt, preds)["ceiling"]["tag_limited_ABO"] == pytest.approx(2 / 3)


def test_script_end_to_end(case, tmp_path):
    """benchmarks/diagnose_predictions.py on the drawn case written as COCO files (no pool)."""
    from wsis.data.coco import write_coco_gt

    gt, preds, _ = case
    gt_json = tmp_path / "gt.json"
    write_coco_gt(gt, gt_json)
    results = [{"image_id": i, "category_id": int(c), "score": float(s), "segmentation": m}
               for i, p in preds.items() for c, s, m in zip(p.labels, p.scores, p.rles())]
    (tmp_path / "pred.json").write_text(json.dumps(results))
    out = tmp_path / "diag"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/diagnose_predictions.py"), "--gt", str(gt_json),
                           "--pred", str(tmp_path / "pred.json"), "--name", "drawn", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.with_suffix(".json").read_text())["drawn"]["all"]
    assert row["tag_mAP"] == pytest.approx(0.75) and row["ceiling"]["tag_limited_ABO"] == pytest.approx(2 / 3)
    # the table's row: all classes (2), no threshold, tag mAP 75.0, P / R 2/3, real = oracle filter here
    assert ("| drawn | all2 | - | 75.0 (2) | 66.7 / 66.7 (3 pass, 3 true) | 41.7 / 41.7 / 66.7 |"
            in out.with_suffix(".md").read_text())


def test_pool_settings_from_workdir_and_config(tmp_path, monkeypatch):
    """--proposals: a workdir's saved config (PRM's or WISE's nested retrieval) or a method config."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from diagnose_predictions import pool_settings

    run = tmp_path / "run"
    run.mkdir()
    (run / "method.json").write_text(json.dumps({"method": "wise", "config": {
        "proposals": {"method": "superpixel", "settings": {"max_side": 200}},
        "prm": {"test": {"retrieval": {"size_limit": [0.001, 0.5], "proposal_count": 100}}}}}))
    proposals, origin, limit, count = pool_settings(str(run))
    assert (proposals.method, proposals.settings, limit, count) == ("superpixel", {"max_side": 200}, (0.001, 0.5), 100)
    assert origin == {"workdir": str(run)}
    # a config by name: PDSL's CPU pool, no retrieval limits
    proposals, origin, limit, count = pool_settings("pdsl_cpu.yaml")
    assert (proposals.method, proposals.settings["max_proposals"], limit, count) == ("superpixel", 300, None, None)


def test_summarise_voc20_keeps_the_voc_classes_only(case):
    """With b named 'person' (a VOC class) and a not, the voc20 row sees class b and instance B1 only."""
    gt, preds, pool = case
    gt = RecordSet(gt.records, {1: "a", 2: "person"}, "drawn")
    best = {r.image_id: dg.pool_best_iou(r, pool[r.image_id]) for r in gt.records}
    row = dg.summarise(gt, preds, best_iou=best, subset="voc20")
    # class b alone: AP 0.5 (above); its one predicted pair (2, b) is wrong, its positive (1, b) missed
    assert row["tag_mAP"] == pytest.approx(0.5) and row["tag_classes"] == 1
    assert (row["tag_passed"], row["tag_precision"], row["tag_recall"]) == (1, 0.0, 0.0)
    assert row["predicted"]["n_pred"] == 1 and row["oracle_filter"]["n_pred"] == 0
    assert row["predicted"]["ABO"] == 0.0
    # B1 alone: pool 0.5, but b is not predicted in image 1 -> tag-limited 0
    assert row["ceiling"] == {"instances": 1, "class_predicted": 0.0, "ABO": 0.5, "recall_0.5": 1.0,
                              "tag_limited_ABO": 0.0}


def test_a_box_pool_has_no_mask_ceiling(case, monkeypatch):
    """Selective search (Label-PEnet's pool) gives boxes: the script says so instead of a ceiling of 0."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from diagnose_predictions import ceilings

    from wsis.proposals import Proposals

    class BoxPool:
        method = "selective_search"

        def cache(self, root):
            return None

        def get(self, cache, path):
            return Proposals((8, 8), boxes=np.array([[0, 0, 4, 4]], np.float32))

    gt = case[0]
    with pytest.raises(SystemExit, match="boxes, not masks"):
        ceilings(gt.records, BoxPool(), None, None)


def test_candidate_overlaps_count_only_the_candidates_class(case):
    gt = case[0]
    record = gt.records[0]  # A1 of class 1, B1 of class 2
    masks = np.stack([A1, box(0, 4, 0, 2), B1, A1])
    boxes = np.array([[0, 0, 4, 4], [0, 0, 2, 4], [4, 4, 8, 8], [0, 0, 4, 4]], float)
    box_best, mask_best = dg.candidate_overlaps(record, boxes, masks, [1, 1, 1, 3])
    # itself; half of A1 (8 of 16 pixels); B1 but labelled 1 (A1, its class, is disjoint); a class absent
    np.testing.assert_allclose(box_best, [1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(mask_best, [1.0, 0.5, 0.0, 0.0])
    assert [len(v) for v in dg.candidate_overlaps(record, np.zeros((0, 4)), np.zeros((0, 8, 8), bool), [])] == [0, 0]
