"""The README's "Your own photos" workflow, command for command, on a handful of real photos from
../shared/data: a folder of coco128 photos with a tags.csv and COCO's class ids, a tiny schedule,
predictions on two coco-val50 images, scored against the val json with the class names right and
only the predicted images counted, then overlays."""
import csv
import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from PIL import Image

from wsis.cli import main

TRAIN = SHARED_DATA / "coco128" / "annotations" / "instances_train2017.json"
VAL = SHARED_DATA / "coco-val50" / "annotations" / "instances_val2017.json"


def _own_photos(folder: Path, count: int) -> None:
    """``count`` coco128 photos (shrunk to 160 px: they are "own" photos, so any size will do) and
    their tags by class name, as a user would write them."""
    data = json.loads(TRAIN.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    tags: dict[int, set[str]] = {}
    for a in data["annotations"]:
        if not a.get("iscrowd"):
            tags.setdefault(a["image_id"], set()).add(names[a["category_id"]])
    folder.mkdir()
    with open(folder / "tags.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "tags"])
        for image in sorted(data["images"], key=lambda i: i["file_name"])[:count]:
            photo = Image.open(SHARED_DATA / "coco128" / "train2017" / image["file_name"]).convert("RGB")
            photo.thumbnail((160, 160))
            photo.save(folder / image["file_name"])
            w.writerow([image["file_name"], ";".join(sorted(tags.get(image["id"], ())))])


@pytest.mark.slow
def test_readme_workflow_on_real_photos(tmp_path, capsys):
    if not (TRAIN.is_file() and VAL.is_file()):
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    photos, run = tmp_path / "photos", tmp_path / "run"
    _own_photos(photos, 6)
    tiny = ["schedule.epochs=1", "data.image_size=64", "schedule.batch_size=3", "proposals.settings.max_side=96",
            "proposals.settings.max_proposals=100"]
    # the README's command, with the tiny schedule on top of --config small
    assert main(["train", "prm", "--data", str(photos), "--categories", str(VAL), "--config", "small",
                 "--workdir", str(run), *tiny]) == 0
    out = capsys.readouterr().out
    assert "6 images (0 without tags)" in out and "prm (prm_small.yaml): data.image_size=64" in out
    assert "6 samples, batch 3, 2 steps per epoch x 1 epochs = 2 steps" in out and "s per step over the first 2" in out

    # the same workdir with another image size: refused, naming the key; --restart keeps the old run aside
    other = [*tiny[:1], "data.image_size=96", *tiny[2:]]
    again = ["train", "prm", "--data", str(photos), "--categories", str(VAL), "--config", "small", "--workdir", str(run)]
    assert main([*again, *other]) == 2
    assert "data.image_size: 64 -> 96" in capsys.readouterr().err
    assert main([*again, *tiny]) == 0
    assert "all 1 epochs were done already" in capsys.readouterr().out
    assert main([*again, "--restart", *other]) == 0
    assert len(list(tmp_path.glob("run.old-*"))) == 1
    trained = json.loads((run / "method.json").read_text())["categories"]
    val_names = {c["id"]: c["name"] for c in json.loads(VAL.read_text())["categories"]}
    assert all(val_names[int(k)] == v for k, v in trained.items())  # the folder's classes carry COCO's ids

    results = tmp_path / "results.json"
    # (a one-epoch model's class scores sit below 0: the threshold is lowered so that there is something to score)
    assert main(["predict", "--workdir", str(run), "--data", str(VAL), "--limit", "2", "--out", str(results),
                 "test.class_threshold=-2"]) == 0
    written = json.loads(results.read_text())
    assert written
    first_two = {i["id"] for i in json.loads(VAL.read_text())["images"][:2]}
    assert {r["image_id"] for r in written} <= first_two  # the json's own image ids
    assert all(val_names[r["category_id"]] == r["category_name"] for r in written)

    # a folder of photos (here the training photos themselves), with an inference override
    more = tmp_path / "more.json"
    assert main(["predict", "--workdir", str(run), "--data", str(photos), "--limit", "1", "--out", str(more),
                 "test.class_threshold=-0.5"]) == 0
    assert all(val_names[r["category_id"]] == r["category_name"] for r in json.loads(more.read_text()))

    metrics = tmp_path / "metrics.json"
    capsys.readouterr()
    assert main(["evaluate", "--gt", str(VAL), "--pred", str(results), "--only-predicted", "--out", str(metrics)]) == 0
    report = json.loads(metrics.read_text())
    assert report["images"] == len({r["image_id"] for r in written})
    assert set(report["voc"]["per_class"]) <= set(val_names.values())

    # a threshold no class reaches: nothing found, and one line says why and what to change
    capsys.readouterr()
    empty = tmp_path / "empty.json"
    assert main(["predict", "--workdir", str(run), "--data", str(VAL), "--limit", "1", "--out", str(empty),
                 "test.class_threshold=1000"]) == 0
    assert json.loads(empty.read_text()) == []
    assert "every class score is below test.class_threshold=1000 (highest" in capsys.readouterr().err
    assert main(["predict", "--workdir", str(run), "--data", str(VAL), "--out", str(empty), "schedule.lr=1"]) == 2
    assert "'schedule.lr' is not an inference setting of prm" in capsys.readouterr().err

    viz = tmp_path / "overlays"
    assert main(["visualize", "--data", str(VAL), "--pred", str(results), "--max-images", "2", "--out", str(viz)]) == 0
    assert (viz / "index.html").is_file() and len(list(viz.glob("*.png"))) == 2
