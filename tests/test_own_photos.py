"""The own-photos workflow of issue #14, finding by finding, on hand-made files with known answers.

Scene: a COCO-style ground truth with three 10x10 images -- 11: a person (rows 0-4), 12: a dog
(rows 0-4), 13: a sheep (rows 5-9); COCO ids person 1, dog 18, sheep 20. A folder of the same
photos is tagged dog/person, which a folder numbers alphabetically: dog 1, person 2.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import _fake_method
from wsis import masks as mask_ops
from wsis.cli import _output_classes, main
from wsis.data import load_dataset, read_folder
from wsis.errors import InputError, InputWarning
from wsis.methods import METHODS

COCO_CATS = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 20, "name": "sheep"}]


def _rows(r0, r1, c0=0, c1=10):
    m = np.zeros((10, 10), bool)
    m[r0:r1, c0:c1] = True
    return m


def _images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(np.full((10, 10, 3), 100, np.uint8)).save(folder / n)


@pytest.fixture
def scene(tmp_path):
    """gt.json (images in images/ beside it) and a tagged folder photos/ of the same images."""
    names = {11: "11.png", 12: "12.png", 13: "13.png"}
    _images(tmp_path / "coco" / "images", names.values())
    anns = []
    for k, (img, cat, m) in enumerate([(11, 1, _rows(0, 5)), (12, 18, _rows(0, 5)), (13, 20, _rows(5, 10))], 1):
        anns.append({"id": k, "image_id": img, "category_id": cat, "iscrowd": 0, "area": int(m.sum()),
                     "bbox": mask_ops.to_bbox([mask_ops.encode(m)])[0].tolist(), "segmentation": mask_ops.encode(m)})
    gt = {"images": [{"id": i, "file_name": n, "height": 10, "width": 10} for i, n in names.items()],
          "annotations": anns, "categories": COCO_CATS}
    (tmp_path / "coco" / "gt.json").write_text(json.dumps(gt))
    _images(tmp_path / "photos", names.values())
    (tmp_path / "photos" / "tags.csv").write_text("image,tags\n11.png,person\n12.png,dog\n13.png,\n")
    return tmp_path


def _results(path: Path, entries) -> Path:
    path.write_text(json.dumps([{"image_id": i, "category_id": c, "category_name": n, "score": s,
                                 "segmentation": mask_ops.encode(m)} for i, c, n, s, m in entries]))
    return path


# ------------------------------------------------------------------ finding 1: class identity
def test_1_results_with_folder_ids_are_scored_by_name(scene, capsys):
    """Folder ids (dog 1, person 2) against COCO ids (person 1, dog 18): matched by name, person and
    dog are found exactly (AP 1 each), sheep has no prediction (AP 0): mAP@0.5 = 2/3. Taken as ids,
    id 1 would have been scored as person and id 2 rejected."""
    pred = _results(scene / "r.json", [(11, 2, "person", 0.9, _rows(0, 5)), (12, 1, "dog", 0.8, _rows(0, 5))])
    out = scene / "m.json"
    assert main(["evaluate", "--gt", str(scene / "coco" / "gt.json"), "--pred", str(pred), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "matched 2 class(es) by name" in printed and "person 2->1" in printed and "dog 1->18" in printed
    voc = json.loads(out.read_text())["voc"]
    assert voc["mAP"]["0.5"] == pytest.approx(2 / 3)
    assert voc["per_class"]["person"]["AP@0.5"] == 1.0 and voc["per_class"]["dog"]["AP@0.5"] == 1.0


def test_1_unknown_class_name_is_refused(scene, capsys):
    pred = _results(scene / "r.json", [(11, 2, "bwol", 0.9, _rows(0, 5))])
    assert main(["evaluate", "--gt", str(scene / "coco" / "gt.json"), "--pred", str(pred)]) == 2
    err = capsys.readouterr().err
    assert "r.json" in err and "'bwol'" in err and "not among the classes" in err


def test_1_visualize_labels_by_name(scene):
    from wsis.data.coco import load_coco_results

    gt = load_dataset(scene / "coco" / "gt.json")
    pred = _results(scene / "r.json", [(11, 2, "person", 0.9, _rows(0, 5))])
    res = load_coco_results(pred, gt)
    assert res.predictions[11].labels.tolist() == [1] and gt.categories[1] == "person"
    assert main(["visualize", "--data", str(scene / "coco" / "gt.json"), "--pred", str(pred),
                 "--out", str(scene / "viz")]) == 0
    assert "person" in (scene / "viz" / "index.html").read_text()


def test_1_folder_takes_the_class_ids_of_a_coco_json(scene):
    records = load_dataset(scene / "photos", categories=scene / "coco" / "gt.json")
    assert records.categories == {1: "person", 18: "dog", 20: "sheep"}
    assert [r.tags for r in records] == [(1,), (18,), ()]
    (scene / "photos" / "categories.csv").write_text("id,name\n5,dog\n7,person\n")
    assert [r.tags for r in load_dataset(scene / "photos")] == [(7,), (5,), ()]


def test_1_predict_writes_the_ids_of_the_data_it_runs_on():
    """A model trained on folder ids, predicting on a COCO json, writes COCO ids; a model class
    the data does not have is refused."""
    from wsis.structures import RecordSet

    meta = {"categories": {"1": "dog", "2": "person"}}
    coco = RecordSet([], {1: "person", 18: "dog", 20: "sheep"})
    to_data, names = _output_classes(meta, coco, True, Path("gt.json"))
    assert to_data == {1: 18, 2: 1} and names[18] == "dog"
    assert _output_classes(meta, RecordSet([], {}), False, Path("photos"))[0] == {1: 1, 2: 2}
    with pytest.raises(InputError, match="'dog'"):
        _output_classes(meta, RecordSet([], {1: "person"}), True, Path("gt.json"))


# ------------------------------------------------------------------ finding 3: strict tags
def test_3_unquoted_comma_is_an_error_naming_the_line(scene):
    (scene / "photos" / "tags.csv").write_text("image,tags\n11.png,person\n12.png,dog,person\n")
    with pytest.raises(InputError, match=r"tags.csv: line 3: 3 fields"):
        read_folder(scene / "photos", scene / "photos" / "tags.csv")
    (scene / "photos" / "tags.csv").write_text('image,tags\n11.png,person\n12.png,"dog,person"\n')
    with pytest.raises(InputError, match=r"line 3: tag 'dog,person' holds a comma"):
        read_folder(scene / "photos", scene / "photos" / "tags.csv")
    (scene / "photos" / "tags.csv").write_text('image,tags\n"11.png","dog; person"\n')
    assert read_folder(scene / "photos", scene / "photos" / "tags.csv")[0].tags == (1, 2)


def test_3_near_duplicate_tags_warn_naming_both(scene):
    (scene / "photos" / "tags.csv").write_text("image,tags\n11.png,bowl\n12.png,bowl\n13.png,bwol\n")
    with pytest.warns(InputWarning, match=r"'bowl' \(line 2, 2 image\(s\)\) and 'bwol' \(line 4, 1 image\(s\)\)"):
        read_folder(scene / "photos", scene / "photos" / "tags.csv")


def test_3_unknown_tag_with_a_class_list_names_the_line(scene, capsys):
    (scene / "photos" / "tags.csv").write_text("image,tags\n11.png,person\n12.png,dgo\n")
    code = main(["convert", "--data", str(scene / "photos"), "--categories", str(scene / "coco" / "gt.json"),
                 "--out", str(scene / "x.json")])
    assert code == 2
    assert "tags.csv: line 3: unknown class 'dgo'; did you mean 'dog'?" in capsys.readouterr().err


# ------------------------------------------------------------------ finding 4: subsets
@pytest.fixture
def fake_method(monkeypatch):
    from wsis.methods.base import REGISTRY

    monkeypatch.setitem(METHODS, "fake", "_fake_method")
    monkeypatch.setitem(REGISTRY, "fake", _fake_method.FakePredictor)


def test_4_predict_a_few_images_of_a_coco_json_and_score_with_coverage(scene, fake_method, capsys):
    """Model classes dog 1, person 2 (folder ids); the stand-in predicts the top half as person on
    image 11 and as dog on image 12 (both exact). Against all three images: person 1, dog 1,
    sheep 0 -> 2/3, with a coverage warning; --only-predicted scores images 11 and 12 -> 1."""
    work = _fake_method.write_workdir(scene / "run", {1: "dog", 2: "person"})
    gt = scene / "coco" / "gt.json"
    res = scene / "r.json"
    assert main(["predict", "--workdir", str(work), "--data", str(gt), "--images", "11.png,12.png",
                 "--out", str(res)]) == 0
    written = json.loads(res.read_text())
    assert sorted((r["image_id"], r["category_id"], r["category_name"]) for r in written) == [
        (11, 1, "person"), (12, 18, "dog")]
    capsys.readouterr()
    out = scene / "m.json"
    assert main(["evaluate", "--gt", str(gt), "--pred", str(res), "--out", str(out)]) == 0
    assert "2 of 3 images have predictions" in capsys.readouterr().err
    assert json.loads(out.read_text())["voc"]["mAP"]["0.5"] == pytest.approx(2 / 3)
    assert main(["evaluate", "--gt", str(gt), "--pred", str(res), "--out", str(out), "--only-predicted"]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 2 and report["voc"]["mAP"]["0.5"] == pytest.approx(1.0)


def test_4_ids_and_limit_select_and_unknown_names_are_errors(scene, fake_method, capsys):
    work = _fake_method.write_workdir(scene / "run", {1: "dog", 2: "person"})
    gt, res = scene / "coco" / "gt.json", scene / "r.json"
    assert main(["predict", "--workdir", str(work), "--data", str(gt), "--ids", "13,12", "--out", str(res)]) == 0
    assert sorted(r["image_id"] for r in json.loads(res.read_text())) == [12, 13]
    assert main(["predict", "--workdir", str(work), "--data", str(gt), "--limit", "1", "--out", str(res)]) == 0
    assert [r["image_id"] for r in json.loads(res.read_text())] == [11]
    (scene / "list.txt").write_text("# a few\n11.png\nnope.png\n")
    capsys.readouterr()
    assert main(["predict", "--workdir", str(work), "--data", str(gt), "--images", str(scene / "list.txt"),
                 "--out", str(res)]) == 2
    assert "list.txt: line 3: image 'nope.png' is not in gt" in capsys.readouterr().err


def test_2_predict_takes_inference_overrides_and_refuses_training_keys(scene, fake_method, capsys):
    from wsis.methods import load_trained

    work = _fake_method.write_workdir(scene / "run", {1: "dog", 2: "person"})
    assert load_trained(work, ["test.score=0.1"]).overrides == ["test.score=0.1"]
    code = main(["predict", "--workdir", str(work), "--data", str(scene / "coco" / "gt.json"), "--out",
                 str(scene / "r.json"), "test.score=0.1", "schedule.epochs=3"])
    assert code == 2 and not (scene / "r.json").exists()
    assert "'schedule.epochs' is not an inference setting of fake; predict takes device, test" in capsys.readouterr().err


# ------------------------------------------------------------------ finding 6: nothing half-written
def _truncated_jpeg(path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsis.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])


def test_6_train_on_a_truncated_jpeg_leaves_no_workdir(scene):
    _truncated_jpeg(scene / "photos" / "bad.jpg")
    (scene / "photos" / "tags.csv").write_text("image,tags\n11.png,person\nbad.jpg,dog\n")
    proc = _cli("train", "prm", "--data", str(scene / "photos"), "--workdir", str(scene / "run"))
    assert proc.returncode == 2 and "bad.jpg" in proc.stderr and "Traceback" not in proc.stderr
    assert not (scene / "run").exists()


def test_6_visualize_with_a_truncated_jpeg_writes_nothing(scene, capsys):
    _truncated_jpeg(scene / "photos" / "0bad.jpg")
    out = scene / "viz"
    assert main(["visualize", "--data", str(scene / "photos"), "--tags", str(scene / "none.csv"), "--out", str(out)]) == 2
    assert main(["visualize", "--data", str(scene / "photos"), "--out", str(out)]) == 0  # tags.csv lacks 0bad.jpg
    before = sorted(p.name for p in out.iterdir())
    (scene / "photos" / "tags.csv").write_text("image,tags\n11.png,person\n0bad.jpg,dog\n")
    capsys.readouterr()
    assert main(["visualize", "--data", str(scene / "photos"), "--out", str(out)]) == 2
    assert "0bad.jpg" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before  # the earlier pages, untouched
    fresh = scene / "viz2"
    assert main(["visualize", "--data", str(scene / "photos"), "--out", str(fresh)]) == 2
    assert not fresh.exists()  # not a 1.png without index.html
    assert [p.name for p in scene.iterdir() if p.name.startswith(".viz")] == []


def test_6_convert_checks_image_sizes_against_the_files(scene, capsys):
    gt = json.loads((scene / "coco" / "gt.json").read_text())
    gt["images"][1]["width"] = 12
    gt["annotations"][1]["segmentation"] = mask_ops.encode(np.zeros((10, 12), bool))
    (scene / "coco" / "gt.json").write_text(json.dumps(gt))
    assert main(["convert", "--data", str(scene / "coco" / "gt.json"), "--out", str(scene / "x.json")]) == 2
    assert "image 12 (12.png) is listed as 12x10 but the file" in capsys.readouterr().err
    (scene / "coco" / "images" / "12.png").unlink()
    assert main(["convert", "--data", str(scene / "coco" / "gt.json"), "--out", str(scene / "x.json")]) == 0
    assert "image sizes not checked for 1 of 3 images" in capsys.readouterr().err


# ------------------------------------------------------------------ finding 7: evaluate from json alone
def test_7_evaluate_needs_no_images(scene):
    for p in (scene / "coco" / "images").iterdir():
        p.unlink()
    pred = _results(scene / "r.json", [(11, 1, "person", 0.9, _rows(0, 5))])
    out = scene / "m.json"
    assert main(["evaluate", "--gt", str(scene / "coco" / "gt.json"), "--pred", str(pred), "--out", str(out)]) == 0
    # person found (AP 1), dog and sheep missed (AP 0)
    assert json.loads(out.read_text())["voc"]["mAP"]["0.5"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------ finding 8: fast failures, messages
_NO_TORCH = ("import sys; from wsis.cli import main; rc = main(sys.argv[1:]); "
             "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")


@pytest.mark.parametrize("case", ["train_missing_data", "train_untagged", "predict_missing_workdir"])
def test_8_error_only_runs_do_not_import_torch(scene, case):
    (scene / "photos" / "tags.csv").write_text("image,tags\n11.png,\n")
    args = {
        "train_missing_data": ["train", "prm", "--data", str(scene / "nowhere"), "--workdir", str(scene / "w")],
        "train_untagged": ["train", "prm", "--data", str(scene / "photos"), "--workdir", str(scene / "w")],
        "predict_missing_workdir": ["predict", "--workdir", str(scene / "w"), "--data", str(scene / "photos"),
                                    "--out", str(scene / "r.json")],
    }[case]
    # torch not imported is what makes these runs fast (~0.4 s on the idle machine); the time itself is
    # not asserted: on the shared 2-core machine under load it passed 5 s (speed goals live in benchmarks/)
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.split() == ["NO-TORCH", "2"], proc.stderr
    assert not (scene / "w").exists()


def test_8_untagged_folder_names_the_tags_file(scene, capsys):
    (scene / "photos" / "tags.csv").write_text("image,tags\n11.png,\n")
    assert main(["train", "prm", "--data", str(scene / "photos"), "--workdir", str(scene / "w")]) == 2
    assert f"{scene / 'photos' / 'tags.csv'}: no image has a tag" in capsys.readouterr().err


def test_8_escaping_name_in_tags_csv_gives_the_line(scene):
    (scene / "photos" / "tags.csv").write_text("image,tags\n11.png,person\n../coco/images/12.png,dog\n")
    with pytest.raises(InputError, match=r"tags.csv: line 3: file name '../coco/images/12.png' escapes"):
        read_folder(scene / "photos", scene / "photos" / "tags.csv")


def test_8_configs_by_name(scene, capsys):
    from wsis.cli import config_path

    assert config_path("prm", "cpu").name == "prm_cpu.yaml"
    assert config_path("prm", "demo_prm").name == "demo_prm.yaml"
    from wsis.config import load_config
    from wsis.methods.prm import PRMMethodConfig

    small = load_config(PRMMethodConfig, config_path("prm", "small"))
    s = small.schedule
    assert (small.data.image_size, s.batch_size, s.lr, s.epochs) == (224, 4, 0.05, 20)
    code = main(["train", "prm", "--data", str(scene / "photos"), "--workdir", str(scene / "w"), "--config", "tiny"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no config named 'tiny' for prm (named configs: cpu" in err and not (scene / "w").exists()


def test_1_predictions_on_an_untagged_folder_are_drawn_with_their_names(scene):
    from wsis.data.coco import load_coco_results

    (scene / "photos" / "tags.csv").unlink()
    folder = load_dataset(scene / "photos")
    assert folder.categories == {}
    pred = _results(scene / "r.json", [(1, 18, "dog", 0.9, _rows(0, 5))])
    res = load_coco_results(pred, folder)
    assert res.categories == {18: "dog"} and res.predictions[1].labels.tolist() == [18]
    assert main(["visualize", "--data", str(scene / "photos"), "--pred", str(pred), "--out", str(scene / "viz")]) == 0
    assert "dog" in (scene / "viz" / "index.html").read_text()


# ------------------------------------------------------------------ finding 2: say what will happen
def test_2_train_start_line_lists_images_and_classes(scene):
    from wsis.cli import data_line

    (scene / "photos" / "tags.csv").write_text("image,tags\n11.png,person;dog\n12.png,dog\n13.png,\n")
    line = data_line(load_dataset(scene / "photos"))
    assert line == "3 images (1 without tags), 2 classes (images per class: dog 2, person 1)"


def test_8_malformed_yaml_names_the_line(tmp_path):
    from wsis.config import load_config
    from wsis.methods.prm import PRMMethodConfig

    bad = tmp_path / "bad.yaml"
    bad.write_text("classifier:\n  epochs: 3\n  lr: [0.1\n")
    with pytest.raises(InputError, match=r"bad.yaml: malformed YAML at line \d+, column \d+"):
        load_config(PRMMethodConfig, bad)


def test_2_inference_keys_are_fields_of_each_config():
    """What predict may override exists in every method's config (a typo would refuse a valid key)."""
    import dataclasses
    import typing

    from wsis.methods import get_method
    from wsis.methods.base import REGISTRY

    for name in METHODS:
        get_method(name)
        cls = REGISTRY[name]
        for key in cls.inference_keys:
            node = cls.config_class
            for part in key.split("."):
                hints = typing.get_type_hints(node)
                assert part in hints, f"{name}: {key}"
                node = hints[part] if dataclasses.is_dataclass(hints[part]) else None
                if node is None:
                    break
