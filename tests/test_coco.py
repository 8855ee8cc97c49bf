import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import SHARED_DATA
from wsis import masks as mask_ops
from wsis.data.coco import read_coco, read_coco_results, write_coco_gt, write_coco_results
from wsis.errors import InputError
from wsis.structures import Instances

COCO128 = SHARED_DATA / "coco128" / "annotations" / "instances_train2017.json"
VAL50 = SHARED_DATA / "coco-val50" / "annotations" / "instances_val2017.json"

# Last column of a 4x6 image in column-major order: 20 zeros then 4 ones.
LAST_COLUMN = mask_utils.frPyObjects({"size": [4, 6], "counts": [20, 4]}, 4, 6)["counts"].decode()


def mini_json():
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 4, "width": 6, "wsis_ignore": {"size": [4, 6], "counts": [0, 4, 20]}},
            {"id": 2, "file_name": "b.png", "height": 2, "width": 2},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "bird"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 2, 2],
             "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]},
            {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0,
             "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2], [4, 2, 6, 2, 6, 4, 4, 4]]},
            {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": {"size": [4, 6], "counts": [5, 3, 16]}},
            {"id": 4, "image_id": 1, "category_id": 5, "iscrowd": 0, "segmentation": {"size": [4, 6], "counts": LAST_COLUMN}},
        ],
    }


def make_coco(tmp_path: Path, data=None, name="instances_mini") -> Path:
    """annotations/<name>.json with images in <name without instances_>/."""
    images = tmp_path / name.replace("instances_", "")
    images.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4)).save(images / "a.png")
    Image.new("RGB", (2, 2)).save(images / "b.png")
    (tmp_path / "annotations").mkdir(exist_ok=True)
    path = tmp_path / "annotations" / f"{name}.json"
    path.write_text(json.dumps(mini_json() if data is None else data))
    return path


def grid(rows):
    return np.array([[c == "#" for c in row] for row in rows])


def test_every_segmentation_form(tmp_path):
    records = read_coco(make_coco(tmp_path))
    assert records.categories == {1: "cat", 2: "dog", 5: "bird"} and records.name == "mini"
    rec = records[0]
    assert rec.path == tmp_path / "mini" / "a.png" and rec.size == (4, 6)
    assert rec.gt.labels.tolist() == [1, 2, 1, 5] and rec.crowd.tolist() == [False, False, True, False]
    assert rec.tags == (1, 2, 5) and rec.num_instances == 3
    masks = rec.gt.mask_array()
    assert np.array_equal(masks[0], grid(["......", ".##...", ".##...", "......"]))  # polygon
    assert np.array_equal(masks[1], grid(["##....", "##....", "....##", "....##"]))  # two-part polygon
    assert np.array_equal(masks[2], grid(["......", ".#....", ".#....", ".#...."]))  # uncompressed RLE
    assert np.array_equal(masks[3], grid([".....#"] * 4))  # compressed RLE
    # The given bbox is kept; missing ones come from the masks.
    assert rec.gt.boxes.tolist() == [[1, 1, 3, 3], [0, 0, 6, 4], [1, 1, 2, 4], [5, 0, 6, 4]]
    assert np.array_equal(rec.ignore_mask(), grid(["#....."] * 4))


def test_crowd_only_categories_still_count_as_tags(tmp_path):
    data = mini_json()
    data["annotations"] = [a for a in data["annotations"] if a["id"] == 3]
    rec = read_coco(make_coco(tmp_path, data))[0]
    assert rec.tags == (1,) and rec.num_instances == 0 and rec.crowd.tolist() == [True]


def test_image_without_annotations_is_kept_empty(tmp_path):
    rec = read_coco(make_coco(tmp_path))[1]
    assert rec.image_id == 2 and rec.tags == () and len(rec.gt) == 0 and rec.ignore is None
    assert rec.gt.masks == []


def test_box_only_annotations_give_no_masks(tmp_path):
    data = mini_json()
    data["annotations"] = [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 0, 3, 2], "iscrowd": 0}]
    rec = read_coco(make_coco(tmp_path, data))[0]
    assert rec.gt.masks is None and rec.gt.boxes.tolist() == [[1, 0, 4, 2]]


def test_image_root_is_the_json_folder_when_no_instances_prefix(tmp_path):
    Image.new("RGB", (6, 4)).save(tmp_path / "a.png")
    (tmp_path / "gt.json").write_text(json.dumps(mini_json()))
    assert read_coco(tmp_path / "gt.json")[0].path == tmp_path / "a.png"


def test_explicit_image_root(tmp_path):
    path = make_coco(tmp_path)
    assert read_coco(path, image_root=tmp_path / "elsewhere")[1].path == tmp_path / "elsewhere" / "b.png"


# ------------------------------------------------------------------------------------- bad input
def bad(tmp_path, edit):
    data = mini_json()
    edit(data)
    return make_coco(tmp_path, data)


def test_malformed_json_reports_the_line(tmp_path):
    path = tmp_path / "instances_x.json"
    path.write_text('{\n  "images": [],\n  "categories": [,]\n}')
    with pytest.raises(InputError, match=r"instances_x.json.*line 3"):
        read_coco(path)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"][0].pop("height"), "height"),
    (lambda d: d.pop("categories"), "categories"),
    (lambda d: d["annotations"][0].pop("category_id"), "category_id"),
    (lambda d: d["annotations"][0].update(image_id=99), "unknown image id 99"),
    (lambda d: d["annotations"][0].update(category_id=3), "unknown category id 3"),
    (lambda d: d["annotations"][2]["segmentation"].update(size=[5, 6]), "size"),
    (lambda d: d["annotations"][2]["segmentation"].update(counts=[5, 3, 15]), "23 pixels"),
    (lambda d: d["images"][0].update(wsis_ignore={"size": [4, 7], "counts": [28]}), "wsis_ignore"),
    (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 3]]), "polygons"),
    (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 3, 1, "x", 3]]), "invalid segmentation"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [4, 6], "counts": ["a"]}), "invalid segmentation"),
    (lambda d: d["images"][1].update(file_name="../../b.png"), "escapes"),
    (lambda d: d["images"].append(dict(d["images"][1])), "duplicate image id 2"),
    (lambda d: d["images"][1].update(height="tall"), "height must be a positive integer"),
    (lambda d: d["images"][1].update(width=0), "width must be a positive integer"),
    (lambda d: d["annotations"][1].update(image_id=None), "image_id must be an integer"),
    (lambda d: d.update(annotations={"id": 1}), "'annotations' must be a list"),
])
def test_bad_annotations_name_the_file(tmp_path, edit, message):
    path = bad(tmp_path, edit)
    with pytest.raises(InputError) as info:
        read_coco(path)
    assert "instances_mini.json" in str(info.value) and message in str(info.value)


def test_unguessable_image_root_names_the_json(tmp_path):
    (tmp_path / "gt.json").write_text(json.dumps(mini_json()))
    with pytest.raises(InputError, match=r"gt.json.*a.png"):
        read_coco(tmp_path / "gt.json")


def test_missing_json_names_the_file(tmp_path):
    with pytest.raises(InputError, match="nope.json"):
        read_coco(tmp_path / "nope.json")


# ------------------------------------------------------------------------------------------ writing
def quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def test_written_ground_truth_loads_in_pycocotools_and_reads_back(tmp_path):
    original = read_coco(make_coco(tmp_path))
    out = tmp_path / "annotations" / "instances_copy.json"
    write_coco_gt(original, out)
    coco = quiet(COCO, str(out))
    assert len(coco.getAnnIds()) == 4 and len(coco.getAnnIds(iscrowd=True)) == 1
    assert coco.loadAnns(2)[0]["area"] == 8 and coco.loadAnns(2)[0]["bbox"] == [0, 0, 6, 4]
    again = read_coco(out, image_root=tmp_path / "mini")
    assert again.categories == original.categories
    for a, b in zip(original, again):
        assert (a.image_id, a.file_name, a.size, a.tags) == (b.image_id, b.file_name, b.size, b.tags)
        assert np.array_equal(a.gt.mask_array(), b.gt.mask_array()) and np.array_equal(a.gt.boxes, b.gt.boxes)
        assert a.crowd.tolist() == b.crowd.tolist() and a.gt.labels.tolist() == b.gt.labels.tolist()
    assert np.array_equal(again[0].ignore_mask(), original[0].ignore_mask())


def predictions_from(records):
    out = {}
    for rec in records:
        keep = ~rec.crowd
        inst = rec.gt.select(keep)
        out[rec.image_id] = Instances(inst.image_size, inst.boxes, inst.labels, np.linspace(0.9, 0.5, len(inst)), inst.masks)
    return out


def test_results_round_trip_and_perfect_predictions_score_ap_1(tmp_path):
    gt = read_coco(make_coco(tmp_path))
    write_coco_gt(gt, tmp_path / "gt.json")
    preds = predictions_from(gt)
    write_coco_results(preds, tmp_path / "res.json")
    coco = quiet(COCO, str(tmp_path / "gt.json"))
    dets = quiet(coco.loadRes, str(tmp_path / "res.json"))
    evaluator = COCOeval(coco, dets, "segm")
    quiet(evaluator.evaluate)
    quiet(evaluator.accumulate)
    quiet(evaluator.summarize)
    assert evaluator.stats[0] == pytest.approx(1.0)
    back = read_coco_results(tmp_path / "res.json", gt)
    assert sorted(back) == [1, 2] and len(back[2]) == 0
    assert back[1].labels.tolist() == [1, 2, 5]
    assert np.allclose(back[1].scores, [0.9, 0.7, 0.5])
    assert np.array_equal(back[1].mask_array(), preds[1].mask_array())
    assert back[1].boxes.tolist() == [[1, 1, 3, 3], [0, 0, 6, 4], [5, 0, 6, 4]]


def test_box_only_results(tmp_path):
    gt = read_coco(make_coco(tmp_path))
    (tmp_path / "res.json").write_text(json.dumps([{"image_id": 1, "category_id": 2, "score": 0.3, "bbox": [1, 2, 3, 1]}]))
    back = read_coco_results(tmp_path / "res.json", gt)
    assert back[1].masks is None and back[1].boxes.tolist() == [[1, 2, 4, 3]] and back[2].masks is None


@pytest.mark.parametrize("result, message", [
    ({"image_id": 9, "category_id": 1, "score": 1, "bbox": [0, 0, 1, 1]}, "unknown image id 9"),
    ({"image_id": 1, "category_id": 4, "score": 1, "bbox": [0, 0, 1, 1]}, "unknown category id 4"),
    ({"image_id": 1, "category_id": 1, "score": 1, "segmentation": {"size": [2, 2], "counts": [4]}}, "size"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}, "score"),
])
def test_bad_results_name_the_file(tmp_path, result, message):
    gt = read_coco(make_coco(tmp_path))
    (tmp_path / "res.json").write_text(json.dumps([result]))
    with pytest.raises(InputError) as info:
        read_coco_results(tmp_path / "res.json", gt)
    assert "res.json" in str(info.value) and message in str(info.value)


def test_results_mixing_masks_and_boxes_are_rejected(tmp_path):
    gt = read_coco(make_coco(tmp_path))
    mixed = [{"image_id": 1, "category_id": 1, "score": 1, "bbox": [0, 0, 1, 1]},
             {"image_id": 1, "category_id": 1, "score": 1, "segmentation": {"size": [4, 6], "counts": [24]}}]
    (tmp_path / "res.json").write_text(json.dumps(mixed))
    with pytest.raises(InputError, match="res.json"):
        read_coco_results(tmp_path / "res.json", gt)


# --------------------------------------------------------------------------------------- real data
def test_coco128():
    if not COCO128.is_file():
        pytest.skip(f"shared data not found at {COCO128}")
    records = read_coco(COCO128)
    assert len(records) == 128 and records.categories[1] == "person" and records.categories[90] == "toothbrush"
    # The README's 939 counts every annotation; 10 of them are crowd regions, not instances.
    assert sum(len(r.gt) for r in records) == 939 and sum(int(r.crowd.sum()) for r in records) == 10
    assert records.num_instances == 929
    assert [r.image_id for r in records if not r.tags] == [250, 508]
    assert len({t for r in records for t in r.tags}) == 71
    assert all(r.path.is_file() for r in records)
    first = records[0]
    assert first.image_id == 9 and first.size == (480, 640)
    # Rasterised polygons must match the annotated polygon areas (sub-pixel differences only).
    data = json.loads(COCO128.read_text())
    areas = {a["id"]: a["area"] for a in data["annotations"]}
    ours = mask_ops.area(first.gt.rles())
    theirs = np.array([areas[a["id"]] for a in data["annotations"] if a["image_id"] == 9])
    assert np.median(np.abs(ours - theirs) / theirs) < 0.01


def test_coco_val50():
    if not VAL50.is_file():
        pytest.skip(f"shared data not found at {VAL50}")
    records = read_coco(VAL50)
    assert len(records) == 50 and sum(len(r.gt) for r in records) == 363
    assert sum(int(r.crowd.sum()) for r in records) == 3 and records.num_instances == 360
    assert all(r.path.is_file() for r in records)
    data = json.loads(VAL50.read_text())
    # RLE ground truth: our masks have exactly the annotated areas.
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["area"])
    for rec in records:
        assert mask_ops.area(rec.gt.rles()).tolist() == by_image[rec.image_id]


def test_image_folder_next_to_the_json_is_found(tmp_path):
    """The layout `wsis synth` / `wsis demo` write (annotations.json beside images/) needs no image root."""
    from wsis.data.coco import read_coco as read, write_coco_gt as write
    from wsis.data.synthetic import make_scenes as scenes

    write(scenes(tmp_path / "split", num_images=2, seed=0, image_size=(32, 32)), tmp_path / "split" / "annotations.json")
    records = read(tmp_path / "split" / "annotations.json")
    assert len(records) == 2
    assert all(r.path.parent == tmp_path / "split" / "images" for r in records)
