from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_DATA
from wsis import masks as mask_ops
from wsis.data.voc import VOC_CLASSES, read_voc, voc_colormap, write_voc
from wsis.errors import InputError
from wsis.structures import ImageRecord, Instances, RecordSet

VOC_MINI = SHARED_DATA / "voc-mini"
CAT, DOG, PERSON, BIRD, BOAT = 8, 12, 15, 3, 4

# Image A (6x8): object 1 = cat inside a 255 ring, object 2 = dog with one pixel wrongly classed cat.
OBJ_A = np.array([
    [255, 255, 255, 255, 0, 0, 0, 0],
    [255, 1, 1, 255, 0, 0, 0, 0],
    [255, 1, 1, 255, 0, 0, 0, 0],
    [255, 255, 255, 255, 2, 2, 2, 0],
    [0, 0, 0, 0, 2, 2, 2, 0],
    [0, 0, 0, 0, 2, 2, 2, 0],
], np.uint8)
CLS_A = np.where(OBJ_A == 1, CAT, np.where(OBJ_A == 2, DOG, OBJ_A)).astype(np.uint8)
CLS_A[3, 4] = CAT  # the majority (8 of 9 pixels) still says dog


def xml_text(width, height, objects, size=True):
    body = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>" if size else ""
    for name, box, difficult in objects:
        x0, y0, x1, y1 = box
        body += (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
                 f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    return f"<annotation><filename>x.jpg</filename>{body}</annotation>"


def palette_png(indices, path):
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(voc_colormap().ravel().tolist())
    image.save(path)


def make_voc(root: Path) -> Path:
    for sub in ("JPEGImages", "Annotations", "SegmentationObject", "SegmentationClass"):
        (root / sub).mkdir(parents=True)
    Image.new("RGB", (8, 6), (90, 90, 90)).save(root / "JPEGImages" / "2020_000001.jpg")
    palette_png(OBJ_A, root / "SegmentationObject" / "2020_000001.png")
    palette_png(CLS_A, root / "SegmentationClass" / "2020_000001.png")
    (root / "Annotations" / "2020_000001.xml").write_text(xml_text(8, 6, [
        ("cat", (2, 2, 3, 3), 0), ("dog", (5, 4, 7, 6), 1), ("person", (1, 1, 2, 2), 0)]))
    # Image B (5x5): XML only, so box-only ground truth.
    Image.new("RGB", (5, 5)).save(root / "JPEGImages" / "2020_000002.jpg")
    (root / "Annotations" / "2020_000002.xml").write_text(xml_text(5, 5, [
        ("bird", (2, 3, 4, 5), 1), ("boat", (1, 1, 5, 5), 0)]))
    return root


def write_split(root: Path, sub: str, name: str, lines: str) -> None:
    (root / "ImageSets" / sub).mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / sub / f"{name}.txt").write_text(lines)


def test_voc_class_order():
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[19] == "tvmonitor"
    assert (VOC_CLASSES[CAT - 1], VOC_CLASSES[DOG - 1], VOC_CLASSES[PERSON - 1]) == ("cat", "dog", "person")


def test_masks_give_instances_with_majority_class_and_ignore_band(tmp_path):
    records = read_voc(make_voc(tmp_path / "VOC2012"))
    assert [r.image_id for r in records] == [2020000001]  # only the image with a SegmentationObject
    rec = records[0]
    assert rec.size == (6, 8) and rec.path.name == "2020_000001.jpg"
    assert rec.gt.labels.tolist() == [CAT, DOG]
    assert rec.gt.boxes.tolist() == [[1, 1, 3, 3], [4, 3, 7, 6]]
    masks = rec.gt.mask_array()
    assert masks[0].sum() == 4 and masks[1].sum() == 9 and masks[1][3, 4]
    assert rec.ignore_mask().sum() == 16 - 4 and rec.ignore_mask()[0, 0] and not rec.ignore_mask()[1, 1]
    assert rec.tags == (CAT, DOG, PERSON)  # person is only in the XML
    assert rec.difficult.tolist() == [False, True]  # object k <-> k-th XML object
    assert records.categories[1] == "aeroplane" and records.categories[20] == "tvmonitor"


def test_xml_only_image_has_box_ground_truth(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    write_split(root, "Segmentation", "val", "2020_000001\n2020_000002\n")
    rec = read_voc(root, "val")[1]
    assert rec.image_id == 2020000002 and rec.gt.masks is None and rec.ignore is None
    assert rec.gt.labels.tolist() == [BIRD, BOAT]
    # 1-based inclusive (2,3)-(4,5) -> pixel edges (1,2)-(4,5)
    assert rec.gt.boxes.tolist() == [[1, 2, 4, 5], [0, 0, 5, 5]]
    assert rec.difficult.tolist() == [True, False] and rec.tags == (BIRD, BOAT)


def test_split_from_main_with_flags_and_from_a_path(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    write_split(root, "Main", "cat_train", "2020_000002 -1\n2020_000001  1\n")
    assert [r.image_id for r in read_voc(root, "cat_train")] == [2020000002, 2020000001]
    listing = tmp_path / "mine.txt"
    listing.write_text("2020_000002\n")
    assert [r.image_id for r in read_voc(root, str(listing))] == [2020000002]


def test_segmentation_split_wins_over_main(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    write_split(root, "Segmentation", "train", "2020_000001\n")
    write_split(root, "Main", "train", "2020_000002\n")
    assert [r.image_id for r in read_voc(root, "train")] == [2020000001]


def test_parent_folder_is_accepted(tmp_path):
    make_voc(tmp_path / "VOCdevkit" / "VOC2012")
    assert len(read_voc(tmp_path / "VOCdevkit")) == 1


def test_without_masks_every_xml_is_read(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    for sub in ("SegmentationObject", "SegmentationClass"):
        for f in (root / sub).iterdir():
            f.unlink()
    records = read_voc(root)
    assert [r.image_id for r in records] == [2020000001, 2020000002]
    assert records[0].gt.boxes.tolist() == [[1, 1, 3, 3], [4, 3, 7, 6], [0, 0, 2, 2]]


def test_non_numeric_names_get_positional_ids(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for name in ("b_dog", "a_cat"):
        Image.new("RGB", (4, 4)).save(root / "JPEGImages" / f"{name}.jpg")
        (root / "Annotations" / f"{name}.xml").write_text(xml_text(4, 4, [(name[2:], (1, 1, 4, 4), 0)], size=False))
    records = read_voc(root)
    assert [(r.image_id, r.file_name, r.tags) for r in records] == [(1, "a_cat.jpg", (CAT,)), (2, "b_dog.jpg", (DOG,))]
    assert records[0].size == (4, 4)  # from the JPEG header: the XML has no <size>


# ------------------------------------------------------------------------------------- bad input
def test_missing_split_names_the_file(tmp_path):
    with pytest.raises(InputError, match="test.txt"):
        read_voc(make_voc(tmp_path / "VOC2012"), "test")


def test_malformed_xml_names_the_file(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    (root / "Annotations" / "2020_000001.xml").write_text("<annotation><object></annotation>")
    with pytest.raises(InputError, match="2020_000001.xml"):
        read_voc(root)


def test_unknown_class_names_the_file(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    (root / "Annotations" / "2020_000001.xml").write_text(xml_text(8, 6, [("unicorn", (1, 1, 2, 2), 0)]))
    with pytest.raises(InputError, match=r"2020_000001.xml.*unicorn"):
        read_voc(root)


def test_mask_size_differing_from_image_names_the_png(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    palette_png(np.zeros((6, 7), np.uint8), root / "SegmentationObject" / "2020_000001.png")
    with pytest.raises(InputError, match=r"SegmentationObject/2020_000001.png"):
        read_voc(root)


def test_mask_size_is_checked_against_the_jpeg_without_xml(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    (root / "Annotations" / "2020_000001.xml").unlink()
    palette_png(np.zeros((5, 8), np.uint8), root / "SegmentationClass" / "2020_000001.png")
    with pytest.raises(InputError, match=r"SegmentationClass/2020_000001.png"):
        read_voc(root)


def test_rgb_mask_is_rejected(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    Image.new("RGB", (8, 6)).save(root / "SegmentationObject" / "2020_000001.png")
    with pytest.raises(InputError, match=r"2020_000001.png.*palette"):
        read_voc(root)


def test_missing_image_names_the_file(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    (root / "JPEGImages" / "2020_000001.jpg").unlink()
    with pytest.raises(InputError, match=r"JPEGImages/2020_000001.jpg"):
        read_voc(root)


def test_split_entry_escaping_the_folder_names_the_split_file(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    write_split(root, "Segmentation", "evil", "../../etc/passwd\n")
    with pytest.raises(InputError, match="evil.txt"):
        read_voc(root, "evil")


# --------------------------------------------------------------------------------------- real data
def test_voc_mini_real_files():
    if not VOC_MINI.is_dir():
        pytest.skip(f"shared data not found at {VOC_MINI}")
    records = read_voc(VOC_MINI)
    assert [r.file_name for r in records] == ["2007_000063.jpg", "2011_000003.jpg", "2011_000006.jpg", "2011_000025.jpg"]
    assert records.num_instances == 14
    names = {records.categories[t] for r in records for t in r.gt.labels}
    assert names == {"dog", "chair", "person", "bottle", "sofa", "bus", "car"}
    first = records[0]
    assert first.size == (375, 500) and first.tags == (9, 12)  # chair, dog
    # Tight boxes read off the PNGs with numpy (object 1 = dog, object 2 = chair; the XML's boxes
    # are the looser 122,114,379,275 and 74,0,428,375).
    assert first.gt.labels.tolist() == [DOG, 9]
    assert first.gt.boxes.tolist() == [[125, 119, 373, 271], [78, 0, 425, 375]]
    assert first.ignore_mask().sum() == 8714
    # 2011_000003 (labelme): the 255 band exists only in SegmentationClass and must still be ignored.
    assert records[1].gt.labels.tolist() == [PERSON, PERSON, 5] and records[1].ignore_mask().sum() == 9460
    assert records[1].gt.boxes[2].tolist() == [369, 159, 388, 213]
    assert records[2].gt.labels.tolist() == [PERSON, PERSON, PERSON, 9, PERSON, 18]  # object ids skip 6
    assert records[3].ignore is None and records[3].gt.labels.tolist() == [6, 6, 7]


# ------------------------------------------------------------------------------------------ writing
def assert_same(a: RecordSet, b: RecordSet):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert (ra.image_id, ra.size, ra.tags) == (rb.image_id, rb.size, rb.tags)
        assert ra.gt.labels.tolist() == rb.gt.labels.tolist()
        assert np.array_equal(ra.gt.boxes, rb.gt.boxes)
        assert ra.difficult.tolist() == rb.difficult.tolist()
        assert (ra.gt.masks is None) == (rb.gt.masks is None)
        if ra.gt.masks is not None:
            assert np.array_equal(ra.gt.mask_array(), rb.gt.mask_array())
        assert (ra.ignore is None) == (rb.ignore is None)
        if ra.ignore is not None:
            assert np.array_equal(ra.ignore_mask(), rb.ignore_mask())


def test_write_then_read_generated_tree(tmp_path):
    root = make_voc(tmp_path / "src")
    write_split(root, "Segmentation", "all", "2020_000001\n2020_000002\n")
    original = read_voc(root, "all")
    write_voc(original, tmp_path / "out", split="trainval")
    again = read_voc(tmp_path / "out", "trainval")
    # The person tag of image A came from an XML object without a mask, which VOC masks cannot keep.
    assert again[0].tags == (CAT, DOG)
    original[0].tags = (CAT, DOG)
    assert_same(original, again)
    assert (tmp_path / "out" / "ImageSets" / "Segmentation" / "trainval.txt").read_text() == "2020_000001\n2020_000002\n"
    assert not (tmp_path / "out" / "SegmentationObject" / "2020_000002.png").exists()


def test_written_pngs_use_the_voc_palette(tmp_path):
    write_voc(read_voc(make_voc(tmp_path / "src")), tmp_path / "out")
    cls = Image.open(tmp_path / "out" / "SegmentationClass" / "2020_000001.png")
    assert cls.mode == "P"
    palette = np.array(cls.getpalette()).reshape(-1, 3)
    assert palette[DOG].tolist() == [64, 0, 128] and palette[CAT].tolist() == [64, 0, 0]
    assert palette[255].tolist() == [224, 224, 192]
    indices = np.asarray(cls)
    assert indices[1, 1] == CAT and indices[4, 5] == DOG and indices[0, 0] == 255
    assert indices[3, 4] == DOG  # the instance's class, not the original's stray pixel


def test_write_voc_mini_round_trip(tmp_path):
    if not VOC_MINI.is_dir():
        pytest.skip(f"shared data not found at {VOC_MINI}")
    original = read_voc(VOC_MINI)
    write_voc(original, tmp_path / "out")
    assert_same(original, read_voc(tmp_path / "out", "train"))
    assert (tmp_path / "out" / "JPEGImages" / "2007_000063.jpg").read_bytes() == (VOC_MINI / "VOC2012" / "JPEGImages" / "2007_000063.jpg").read_bytes()


def _shape_record(tmp_path, label, crowd=False):
    Image.new("RGB", (4, 3), (1, 2, 3)).save(tmp_path / "shape.png")
    masks = np.zeros((2, 3, 4), bool)
    masks[0, :2, :2] = True
    masks[1, 2, 1:] = True
    gt = Instances((3, 4), labels=[label, label], masks=mask_ops.encode_many(masks))
    return ImageRecord(7, tmp_path / "shape.png", 4, 3, (label,), gt, crowd=[False, crowd])


def test_custom_class_names_and_crowd_as_ignore(tmp_path):
    rs = RecordSet([_shape_record(tmp_path, 5, crowd=True)], {5: "widget"})
    with pytest.raises(InputError, match="widget"):
        write_voc(rs, tmp_path / "out")
    write_voc(rs, tmp_path / "out", image_ext=".png", class_names=["gadget", "widget"])
    back = read_voc(tmp_path / "out", "train", class_names=["gadget", "widget"])
    rec = back[0]
    assert back.categories == {1: "gadget", 2: "widget"} and rec.image_id == 1  # "shape": positional id
    assert rec.gt.labels.tolist() == [2] and rec.gt.boxes.tolist() == [[0, 0, 2, 2]]
    assert rec.ignore_mask()[2].tolist() == [False, True, True, True]  # the crowd region
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "JPEGImages" / "shape.png")), np.full((3, 4, 3), (1, 2, 3)))
