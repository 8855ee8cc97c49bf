"""Synthetic demo scenes: determinism, annotation consistency and difficulty."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from wsis import masks as mask_ops
from wsis.data.synthetic import SYNTHETIC_CLASSES, make_scene, make_scenes
from wsis.errors import InputError


def _scenes(n: int, seed: int = 0, size: tuple[int, int] = (128, 128), **kw) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [make_scene(np.random.default_rng([seed, i]), size, **kw) for i in range(n)]


def test_classes_are_named_with_ids_from_one() -> None:
    assert sorted(SYNTHETIC_CLASSES) == [1, 2, 3, 4, 5]
    assert all(name and name.strip() == name for name in SYNTHETIC_CLASSES.values())


def test_same_seed_gives_byte_identical_files_and_annotations(tmp_path: Path) -> None:
    a = make_scenes(tmp_path / "a", num_images=3, seed=5, image_size=(64, 64))
    b = make_scenes(tmp_path / "b", num_images=3, seed=5, image_size=(64, 64))
    for ra, rb in zip(a, b):
        assert ra.path.read_bytes() == rb.path.read_bytes()
        assert ra.tags == rb.tags
        np.testing.assert_array_equal(ra.gt.labels, rb.gt.labels)
        np.testing.assert_array_equal(ra.gt.boxes, rb.gt.boxes)
        assert ra.gt.rles() == rb.gt.rles()


def test_other_seed_gives_other_images(tmp_path: Path) -> None:
    a = make_scenes(tmp_path / "a", num_images=1, seed=0, image_size=(64, 64))
    b = make_scenes(tmp_path / "b", num_images=1, seed=1, image_size=(64, 64))
    assert a[0].path.read_bytes() != b[0].path.read_bytes()


def test_image_does_not_depend_on_images_before_it(tmp_path: Path) -> None:
    five = make_scenes(tmp_path / "five", num_images=5, seed=3, image_size=(64, 64))
    # Image 4 of a run of five must be the scene drawn from rng (seed, 4) alone.
    image, labels, masks = make_scene(np.random.default_rng([3, 4]), (64, 64))
    on_disk = cv2.cvtColor(cv2.imread(str(five[4].path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(on_disk, image)
    np.testing.assert_array_equal(five[4].gt.labels, labels)
    np.testing.assert_array_equal(five[4].gt.mask_array(), masks)


def test_files_and_records_layout(tmp_path: Path) -> None:
    rs = make_scenes(tmp_path, num_images=2, image_size=(48, 80))
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["00000.png", "00001.png"]
    assert [r.image_id for r in rs] == [0, 1]
    assert rs.categories == SYNTHETIC_CLASSES
    for r in rs:
        assert (r.height, r.width) == (48, 80)
        assert cv2.imread(str(r.path)).shape == (48, 80, 3)
        assert not r.crowd.any()
        assert r.gt.image_size == (48, 80)


def test_visible_masks_are_disjoint_nonempty_and_inside_image() -> None:
    for image, labels, masks in _scenes(15, size=(96, 112)):
        assert image.shape == (96, 112, 3) and image.dtype == np.uint8
        assert masks.shape == (len(labels), 96, 112)
        assert masks.sum(axis=0).max() <= 1
        assert (masks.reshape(len(labels), -1).sum(axis=1) > 0).all()


def test_boxes_equal_mask_extents_and_tags_equal_label_set(tmp_path: Path) -> None:
    rs = make_scenes(tmp_path, num_images=6, seed=11, image_size=(64, 64))
    for r in rs:
        assert r.tags == tuple(sorted(set(r.gt.labels.tolist())))
        for box, mask in zip(r.gt.boxes, r.gt.mask_array()):
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_instance_counts_stay_within_bounds_and_repeat_classes() -> None:
    scenes = _scenes(30, seed=2, min_objects=2, max_objects=3)
    counts = [len(labels) for _, labels, _ in scenes]
    assert min(counts) >= 2 and max(counts) <= 3
    all_labels = np.concatenate([labels for _, labels, _ in scenes])
    assert set(all_labels.tolist()) == set(SYNTHETIC_CLASSES)
    # Two instances of one class in an image must happen (instance separation needs learning too).
    assert any(len(set(labels.tolist())) < len(labels) for _, labels, _ in scenes)


def test_occluded_objects_keep_enough_of_their_area() -> None:
    # A visible part is at least min_visible of its full shape; a full shape of the smallest size
    # (radius 0.12 * 128 ~ 15 px) has area > 100 px for every class, so half of it exceeds 50 px.
    for _, _, masks in _scenes(15, seed=4, min_visible=0.5):
        assert (masks.reshape(len(masks), -1).sum(axis=1) >= 50).all()


def test_otsu_threshold_does_not_segment_objects() -> None:
    """A global grey threshold (either polarity) must not recover the objects."""
    ious = []
    for image, _, masks in _scenes(20, seed=9):
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        _, fg = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        fg = fg.astype(bool)
        union = masks.any(axis=0)
        ious.append(max((union & f).sum() / (union | f).sum() for f in (fg, ~fg)))
    assert np.mean(ious) < 0.5


def test_masks_round_trip_through_rle(tmp_path: Path) -> None:
    r = make_scenes(tmp_path, num_images=1, seed=8, image_size=(64, 64))[0]
    np.testing.assert_array_equal(mask_ops.area(r.gt.rles()), r.gt.mask_array().reshape(len(r.gt), -1).sum(axis=1))


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_images=0), dict(image_size=(16, 16)), dict(min_objects=3, max_objects=2), dict(min_visible=0.0)],
)
def test_bad_options_raise_input_error(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(InputError):
        make_scenes(tmp_path, **kwargs)
    assert not (tmp_path / "images").exists()
