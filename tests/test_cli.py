"""The command line end to end on hand-made files: known metrics, conversions, clean errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from wsis import masks as mask_ops
from wsis.cli import main


def _rows(r0, r1, c0=0, c1=10):
    m = np.zeros((10, 10), bool)
    m[r0:r1, c0:c1] = True
    return m


@pytest.fixture
def hand_case(tmp_path):
    """Two 10x10 images. Image 1: instance A (class 1, rows 0-4). Image 2: B (class 1, rows 0-4) and
    C (class 2, rows 5-9). Predictions: p1 = A (0.9), p2 = A again (0.8, a duplicate), p3 = left half
    of B (0.7, IoU 25/50 = 0.5)."""
    for i in (1, 2):
        Image.fromarray(np.full((10, 10, 3), 128, np.uint8)).save(tmp_path / f"{i}.png")
    anns = []
    for k, (img, cat, m) in enumerate([(1, 1, _rows(0, 5)), (2, 1, _rows(0, 5)), (2, 2, _rows(5, 10))], 1):
        anns.append({"id": k, "image_id": img, "category_id": cat, "iscrowd": 0, "area": int(m.sum()),
                     "bbox": [0, 0, 10, 5], "segmentation": mask_ops.encode(m)})
    gt = {"images": [{"id": i, "file_name": f"{i}.png", "height": 10, "width": 10} for i in (1, 2)],
          "annotations": anns, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    preds = [{"image_id": img, "category_id": 1, "score": s, "segmentation": mask_ops.encode(m)}
             for img, s, m in [(1, 0.9, _rows(0, 5)), (1, 0.8, _rows(0, 5)), (2, 0.7, _rows(0, 5, 0, 5))]]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    return tmp_path


def test_evaluate_reproduces_hand_computed_metrics(hand_case, capsys):
    out = hand_case / "metrics.json"
    code = main(["evaluate", "--gt", str(hand_case / "gt.json"), "--image-root", str(hand_case),
                 "--pred", str(hand_case / "pred.json"), "--out", str(out)])
    assert code == 0
    m = json.loads(out.read_text())["voc"]
    # class 1 at t=0.5: TP(0.9), FP(0.8 duplicate of a taken instance), TP(0.7); 2 positives.
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> envelope area 0.5*1 + 0.5*2/3 = 5/6; class 2 has
    # ground truth but no prediction -> 0; mAP = 5/12. At 0.7 the third is FP too: 0.5 -> mAP 0.25.
    assert m["mAP"]["0.5"] == pytest.approx(5 / 12)
    assert m["mAP"]["0.25"] == pytest.approx(5 / 12)
    assert m["mAP"]["0.7"] == pytest.approx(0.25)
    assert m["mAP"]["0.75"] == pytest.approx(0.25)
    # ABO: A 1.0, B 0.5, C 0 (no class-2 prediction) -> 0.5; class-agnostic: C overlaps nothing -> 0.5
    assert m["abo"] == pytest.approx(0.5)
    assert m["abo_agnostic"] == pytest.approx(0.5)
    assert "41.7" in capsys.readouterr().out  # the table prints percentages


@pytest.mark.parametrize("problem", ["missing", "malformed", "unknown_image"])
def test_evaluate_bad_input_is_one_line_exit_2(hand_case, problem):
    pred = hand_case / "pred.json"
    if problem == "missing":
        pred = hand_case / "nope.json"
    elif problem == "malformed":
        pred.write_text('[{"image_id": 1,')
    else:
        pred.write_text(json.dumps([{"image_id": 99, "category_id": 1, "score": 1.0,
                                     "segmentation": mask_ops.encode(_rows(0, 5))}]))
    out = hand_case / "m.json"
    proc = subprocess.run([sys.executable, "-m", "wsis.cli", "evaluate", "--gt", str(hand_case / "gt.json"),
                           "--image-root", str(hand_case), "--pred", str(pred), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert pred.name in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_convert_voc_to_coco(tmp_path):
    voc = SHARED_DATA / "voc-mini"
    if not voc.is_dir():
        pytest.skip(f"shared data not found at {voc}")
    out = tmp_path / "voc.json"
    assert main(["convert", "--data", str(voc), "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert len(d["images"]) == 4 and len(d["annotations"]) == 14


def test_visualize_writes_overlays_and_index(hand_case):
    out = hand_case / "viz"
    assert main(["visualize", "--data", str(hand_case / "gt.json"), "--image-root", str(hand_case),
                 "--pred", str(hand_case / "pred.json"), "--out", str(out)]) == 0
    assert (out / "index.html").is_file()
    assert len(list(out.glob("*.png"))) >= 2


def test_unknown_method_is_clean_error(hand_case, capsys):
    assert main(["train", "nomethod", "--data", str(hand_case / "gt.json"), "--image-root", str(hand_case),
                 "--workdir", str(hand_case / "w")]) == 2
    assert "unknown method 'nomethod'" in capsys.readouterr().err


def test_overrides_after_options_reach_the_config(hand_case, capsys):
    # a typo in an override is reported before any training starts
    code = main(["train", "prm", "--data", str(hand_case / "gt.json"), "--image-root", str(hand_case),
                 "--workdir", str(hand_case / "w"), "schedule.epoch=1"])
    assert code == 2
    assert "unknown config key 'schedule.epoch'" in capsys.readouterr().err


def test_visualize_real_coco_val50(tmp_path):
    gt = SHARED_DATA / "coco-val50" / "annotations" / "instances_val2017.json"
    if not gt.is_file():
        pytest.skip(f"shared data not found at {gt}")
    out = tmp_path / "viz"
    assert main(["visualize", "--data", str(gt), "--out", str(out), "--max-images", "3"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3
    html = (out / "index.html").read_text()
    assert all(p.name in html for p in pngs)
