import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import SHARED_DATA
from wsis.data import load_dataset, read_folder
from wsis.errors import InputError


def make_images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (5, 3)).save(folder / "b.png")
    Image.new("L", (2, 4)).save(folder / "a.jpg")
    Image.new("RGB", (6, 6)).save(folder / "C.JPG")
    (folder / "notes.txt").write_text("not an image")
    return folder


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_gives_tags_ids_in_csv_order_and_sizes(tmp_path):
    folder = make_images(tmp_path / "imgs")
    csv = write_csv(folder / "tags.csv", "image,tags\nb.png,dog;cat\na.jpg,\nC.JPG, dog \n")
    records = read_folder(folder, csv)
    assert records.categories == {1: "cat", 2: "dog"}
    assert [(r.image_id, r.file_name, r.size, r.tags) for r in records] == [
        (1, "b.png", (3, 5), (1, 2)), (2, "a.jpg", (4, 2), ()), (3, "C.JPG", (6, 6), (2,))]
    assert records[0].gt is None and records[0].path == folder / "b.png"


def test_given_categories_fix_the_ids(tmp_path):
    folder = make_images(tmp_path / "imgs")
    csv = write_csv(tmp_path / "t.csv", "tags,image\ncat,b.png\n")  # column order does not matter
    records = read_folder(folder, csv, categories=["dog", "cat", "bird"])
    assert records.categories == {1: "dog", 2: "cat", 3: "bird"} and records[0].tags == (2,)


def test_csv_with_bom_and_subfolder_names(tmp_path):
    folder = make_images(tmp_path / "imgs")
    make_images(folder / "sub")
    csv = tmp_path / "t.csv"
    csv.write_bytes("image,tags\r\nsub/b.png,cat\r\n".encode("utf-8-sig"))
    assert read_folder(folder, csv)[0].path == folder / "sub" / "b.png"


def test_without_csv_every_image_sorted_without_tags(tmp_path):
    records = read_folder(make_images(tmp_path / "imgs"))
    assert [(r.image_id, r.file_name, r.tags) for r in records] == [(1, "C.JPG", ()), (2, "a.jpg", ()), (3, "b.png", ())]
    assert records.categories == {}


@pytest.mark.parametrize("text, message", [
    ("image,tags\nmissing.png,cat\n", "missing.png"),
    ("image,tags\nb.png,cat;unicorn\n", "unknown class 'unicorn'"),
    ("file,tags\nb.png,cat\n", "image,tags"),
    ("", "image,tags"),
    ("image,tags\nb.png,cat\na.jpg,dog\nb.png,dog\n", "line 4"),
    ("image,tags\n../imgs/b.png,cat\n", "escapes"),
    ("image,tags\n/etc/hosts,cat\n", "absolute"),
])
def test_bad_csv_names_the_file(tmp_path, text, message):
    folder = make_images(tmp_path / "imgs")
    csv = write_csv(folder / "labels.csv", text)
    with pytest.raises(InputError) as info:
        read_folder(folder, csv, categories=["cat", "dog"])
    assert "labels.csv" in str(info.value) and message in str(info.value)


def test_corrupt_image_names_it(tmp_path):
    folder = make_images(tmp_path / "imgs")
    (folder / "d.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match="d.png"):
        read_folder(folder)


# ------------------------------------------------------------------------------------ load_dataset
def test_folder_uses_its_tags_csv(tmp_path):
    folder = make_images(tmp_path / "imgs")
    write_csv(folder / "tags.csv", "image,tags\na.jpg,cat\n")
    records = load_dataset(folder)
    assert len(records) == 1 and records.categories == {1: "cat"}
    assert len(load_dataset(folder / "tags.csv")) == 1
    other = write_csv(tmp_path / "other.csv", "image,tags\na.jpg,dog\nb.png,dog\n")
    assert len(load_dataset(folder, tags_csv=other)) == 2


def test_folder_without_csv_is_inference_only(tmp_path):
    assert len(load_dataset(make_images(tmp_path / "imgs"))) == 3


def test_coco_json_dispatch(tmp_path):
    Image.new("RGB", (2, 2)).save(tmp_path / "x.png")
    gt = {"images": [{"id": 3, "file_name": "x.png", "height": 2, "width": 2}], "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert [r.image_id for r in load_dataset(tmp_path / "gt.json")] == [3]


def test_voc_dispatch():
    voc = SHARED_DATA / "voc-mini"
    if not voc.is_dir():
        pytest.skip(f"shared data not found at {voc}")
    assert len(load_dataset(voc)) == 4 and len(load_dataset(voc / "VOC2012")) == 4


def test_missing_path_and_empty_dataset(tmp_path):
    with pytest.raises(InputError, match="nowhere"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*no images"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "gt.json").write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(InputError, match="gt.json.*no images"):
        load_dataset(tmp_path / "gt.json")


def test_options_that_do_not_apply_are_rejected(tmp_path):
    folder = make_images(tmp_path / "imgs")
    with pytest.raises(InputError, match="split"):
        load_dataset(folder, split="train")
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(InputError, match="readme.md"):
        load_dataset(tmp_path / "readme.md")
