"""Proposal generators and readers on tiny generated images and hand-written files."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from wsis import masks as mask_ops
from wsis.errors import InputError
from wsis.proposals import Proposals, generate_proposals
from wsis.proposals.boxes import selective_search
from wsis.proposals.grabcut import grabcut_masks
from wsis.proposals.masks import (
    Hierarchy,
    Strategy,
    _adjacency,
    deduplicate,
    group_regions,
    superpixel_proposals,
    superpixel_rles,
)
from wsis.proposals.precomputed import read_box_mat, read_mcg, read_npz, read_proposals, write_npz


def scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """120 x 160 noisy grey background, a red disk and a blue rectangle; returns image, disk, rect."""
    rng = np.random.default_rng(seed)
    image = rng.normal(110, 6, (120, 160, 3)).clip(0, 255)
    yy, xx = np.mgrid[:120, :160]
    disk = (yy - 40) ** 2 + (xx - 45) ** 2 < 22**2
    rect = (yy >= 60) & (yy < 105) & (xx >= 95) & (xx < 150)
    image[disk] = rng.normal([210, 40, 40], 6, (disk.sum(), 3)).clip(0, 255)
    image[rect] = rng.normal([30, 60, 200], 6, (rect.sum(), 3)).clip(0, 255)
    return image.astype(np.uint8), disk, rect


def best_iou(proposals: Proposals, truth: np.ndarray) -> float:
    return float(mask_ops.iou(proposals.masks, [mask_ops.encode(truth)]).max())


# --- the Proposals type -------------------------------------------------------------------------

def test_proposals_checks_lengths_and_sizes():
    with pytest.raises(ValueError):
        Proposals((4, 4), np.zeros((2, 4)), None, np.ones(3))
    wrong = mask_ops.encode(np.ones((3, 3), bool))
    with pytest.raises(ValueError):
        Proposals((4, 4), np.zeros((1, 4)), [wrong], np.ones(1))


def test_proposals_boxes_from_masks_select_and_sorted():
    m = np.zeros((2, 5, 6), bool)
    m[0, 1:3, 2:5] = True
    m[1, 0, 0] = True
    p = Proposals((5, 6), masks=mask_ops.encode_many(m), objectness=np.array([0.2, 0.9]))
    np.testing.assert_array_equal(p.boxes, [[2, 1, 5, 3], [0, 0, 1, 1]])
    s = p.sorted()
    np.testing.assert_array_equal(s.objectness, np.array([0.9, 0.2], np.float32))
    np.testing.assert_array_equal(s.mask_array()[0], m[1])
    assert len(p.select([1])) == 1


# --- superpixel hierarchy -----------------------------------------------------------------------

def test_superpixel_rles_decode_to_each_label():
    labels = np.array([[0, 1, 1, 2], [0, 0, 1, 2], [3, 3, 3, 2]], np.int32)
    rles = superpixel_rles(labels)
    assert len(rles) == 4
    decoded = mask_ops.decode_many([mask_ops.compress(r) for r in rles])
    for i in range(4):
        np.testing.assert_array_equal(decoded[i], labels == i)


def test_adjacency_lengths_and_strength_by_hand():
    labels = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
    gradient = np.zeros((3, 3), np.float32)
    gradient[:, 2] = 4.0  # the right column: edges 0|1 have strength (0 + 4) / 2 = 2
    pairs, sums, lengths = _adjacency(labels, gradient, 3)
    table = {tuple(p): (s, ln) for p, s, ln in zip(pairs.tolist(), sums, lengths)}
    # 0|1: two horizontal edges (rows 0, 1); 0|2: two vertical edges (cols 0, 1); 1|2: one at col 2.
    assert table == {(0, 1): (4.0, 2.0), (0, 2): (0.0, 2.0), (1, 2): (4.0, 1.0)}


def test_objectness_of_a_square_by_hand():
    # A 10 x 10 region inside a 20 x 20 image: contour 40 edges of mean gradient 3, image mean 1,
    # no border: edge = 3 / 4, compact = sqrt(4 pi 100 / 1600) = sqrt(pi) / 2, inner = 1,
    # size = (100 / 400) ** 0.25.
    h = Hierarchy(np.zeros((0, 2), np.int64), area=np.array([100.0]), contour_sum=np.array([120.0]),
                  contour_len=np.array([40.0]), border_len=np.array([0.0]), mean_gradient=1.0, image_area=400.0)
    expected = 0.75 * (np.sqrt(np.pi) / 2) * 1.0 * 0.25**0.25
    assert h.objectness()[0] == pytest.approx(expected, rel=1e-5)
    # The same region half on the frame: inner = sqrt(20 / 40).
    h.contour_len, h.border_len, h.contour_sum = np.array([20.0]), np.array([20.0]), np.array([60.0])
    assert h.objectness()[0] == pytest.approx(expected * np.sqrt(0.5), rel=1e-5)


def test_group_regions_builds_a_full_binary_hierarchy():
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]], np.int32)
    image = np.zeros((4, 4, 3), np.uint8)
    image[labels == 1] = 255
    regions = group_regions(image, labels, np.ones((4, 4), np.float32), Strategy("rgb", 1))
    assert regions.merges.shape == (3, 2)
    np.testing.assert_array_equal(regions.area, [4, 4, 4, 4, 8, 12, 16])
    # Regions 0, 2, 3 are identical black blocks: the odd one (1) joins last.
    assert 1 in regions.merges[-1]
    # The root has no inner contour: its outline is the whole frame.
    assert regions.contour_len[-1] == 0 and regions.border_len[-1] == 16


def test_deduplicate_keeps_first_of_near_duplicates():
    m = np.zeros((3, 20, 20), bool)
    m[0, 0:10, 0:10] = True
    m[1, 0:10, 0:10] = True
    m[1, 10, 0:3] = True  # 103 vs 100 pixels: IoU 0.97
    m[2, 12:20, 12:20] = True
    rles = [mask_ops._for_coco(r) for r in mask_ops.encode_many(m)]
    boxes, areas = mask_ops.to_bbox(mask_ops.encode_many(m)), m.sum(axis=(1, 2))
    np.testing.assert_array_equal(deduplicate(rles, boxes, areas, 0.95), [0, 2])
    np.testing.assert_array_equal(deduplicate(rles, boxes, areas, 0.99), [0, 1, 2])
    np.testing.assert_array_equal(deduplicate(rles, boxes, areas, 0.99, limit=2), [0, 1])


def test_deduplicate_catches_a_thin_spur_that_changes_the_box():
    # 400 pixels vs 400 + a 10-pixel spur: IoU 400 / 410 = 0.976, but box IoU only 400 / 600.
    m = np.zeros((2, 40, 40), bool)
    m[:, 0:20, 0:20] = True
    m[1, 0, 20:30] = True
    rles = [mask_ops._for_coco(r) for r in mask_ops.encode_many(m)]
    boxes, areas = mask_ops.to_bbox(mask_ops.encode_many(m)), m.sum(axis=(1, 2))
    np.testing.assert_array_equal(deduplicate(rles, boxes, areas, 0.95), [0])


def test_superpixel_proposals_find_both_objects():
    image, disk, rect = scene()
    p = superpixel_proposals(image, max_side=160)
    assert 5 <= len(p) <= 1000
    assert best_iou(p, disk) > 0.9 and best_iou(p, rect) > 0.9
    assert np.all(np.diff(p.objectness) <= 0) and p.objectness.min() >= 0 and p.objectness.max() <= 1
    np.testing.assert_allclose(p.boxes, mask_ops.to_bbox(p.masks))
    ious = mask_ops.iou(p.masks, p.masks)
    np.fill_diagonal(ious, 0)
    assert ious.max() <= 0.95
    # The objects outrank the background: their best proposals sit in the top half.
    for truth in (disk, rect):
        top = np.argmax(mask_ops.iou(p.masks, [mask_ops.encode(truth)])[:, 0])
        assert p.objectness[top] > np.median(p.objectness)


def test_superpixel_proposals_map_back_from_a_smaller_working_size():
    image, disk, _ = scene()
    p = superpixel_proposals(image, max_side=80, max_proposals=50)
    assert len(p) <= 50 and p.image_size == (120, 160)
    assert best_iou(p, disk) > 0.8


# --- selective search and GrabCut ---------------------------------------------------------------

def test_selective_search_boxes_cover_the_objects():
    image, disk, rect = scene()
    p = selective_search(image, mode="fast", max_proposals=300)
    assert 0 < len(p) <= 300 and p.masks is None
    assert np.all(p.boxes[:, :2] >= 0) and np.all(p.boxes[:, 2] <= 160) and np.all(p.boxes[:, 3] <= 120)
    assert mask_ops.box_iou(p.boxes, [[23, 18, 67, 62]]).max() > 0.8  # the disk's tight box
    assert mask_ops.box_iou(p.boxes, [[95, 60, 150, 105]]).max() > 0.8
    assert p.objectness[0] == 1.0 and np.all(np.diff(p.objectness) < 0)


def test_selective_search_resizes_and_maps_back():
    image, _, _ = scene()
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)  # 240 x 320
    p = selective_search(big, max_side=160)
    assert mask_ops.box_iou(p.boxes, [[190, 120, 300, 210]]).max() > 0.8


def test_selective_search_rejects_unknown_mode():
    with pytest.raises(ValueError):
        selective_search(scene()[0], mode="best")


def test_grabcut_recovers_the_disk_from_its_box():
    image, disk, _ = scene()
    p = grabcut_masks(image, [[18, 13, 72, 67], [0, 0, 160, 120]], iterations=3, scores=[0.5, 0.2])
    masks = p.mask_array()
    iou = lambda m: (m & disk).sum() / (m | disk).sum()  # noqa: E731
    assert iou(masks[0]) > 0.9
    np.testing.assert_array_equal(p.objectness, np.array([0.5, 0.2], np.float32))
    # The mask never leaves its box.
    assert not masks[0][:, 72:].any() and not masks[0][67:].any()


def test_grabcut_tiny_box_is_its_own_mask():
    p = grabcut_masks(scene()[0], [[5, 6, 6, 9]])
    expected = np.zeros((120, 160), bool)
    expected[6:9, 5:6] = True
    np.testing.assert_array_equal(p.mask_array()[0], expected)


def test_generate_proposals_by_name():
    image, disk, _ = scene()
    p = generate_proposals(image, "selective_search+grabcut", grabcut_top=3, iterations=2)
    assert len(p) == 3 and p.has_masks
    with pytest.raises(InputError, match="unknown proposal method"):
        generate_proposals(image, "mcg")


# --- precomputed files --------------------------------------------------------------------------

SUPERPIXELS = np.array([[1, 1, 2, 2], [1, 1, 2, 3], [4, 4, 3, 3]], np.uint16)


def _cell(items):
    cell = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        cell[i, 0] = np.asarray(item, np.uint32).reshape(1, -1)
    return cell


def test_read_mcg_top_level(tmp_path):
    path = tmp_path / "im.mat"
    scipy.io.savemat(path, {"superpixels": SUPERPIXELS, "labels": _cell([[2, 3], [4], [1, 2, 3, 4]]),
                            "scores": np.array([[0.9], [0.5], [0.1]])})
    p = read_mcg(path)
    masks = p.mask_array()
    np.testing.assert_array_equal(masks[0], [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(masks[1], [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    assert masks[2].all()
    np.testing.assert_array_equal(p.boxes, [[2, 0, 4, 3], [0, 2, 2, 3], [0, 0, 4, 3]])
    np.testing.assert_allclose(p.objectness, [0.9, 0.5, 0.1])
    assert read_proposals(path).image_size == (3, 4)


def test_read_mcg_nested_struct_like_cob(tmp_path):
    path = tmp_path / "cob.mat"
    scipy.io.savemat(path, {"candidates": {"superpixels": SUPERPIXELS, "labels": _cell([[1]]),
                                           "scores": np.array([[0.7]]), "bboxes": np.array([[1, 1, 2, 2]])}})
    p = read_proposals(path)
    np.testing.assert_array_equal(p.mask_array()[0], SUPERPIXELS == 1)


def test_read_mcg_rejects_bad_labels(tmp_path):
    path = tmp_path / "bad.mat"
    scipy.io.savemat(path, {"superpixels": SUPERPIXELS, "labels": _cell([[5]]), "scores": np.array([[1.0]])})
    with pytest.raises(InputError, match="outside 1..4"):
        read_mcg(path)


def test_read_box_mat_single_image(tmp_path):
    path = tmp_path / "ss.mat"
    # [y1 x1 y2 x2], 1-based inclusive: rows 2..5, cols 3..10 -> xyxy (2, 1, 10, 5).
    scipy.io.savemat(path, {"boxes": np.array([[2, 3, 5, 10], [1, 1, 20, 30]], np.float64)})
    p = read_box_mat(path, (12, 16))
    np.testing.assert_array_equal(p.boxes, [[2, 1, 10, 5], [0, 0, 16, 12]])  # second one clipped
    np.testing.assert_allclose(p.objectness, [1.0, 0.5])
    assert p.masks is None


def test_read_box_mat_dataset_file_by_image_name(tmp_path):
    path = tmp_path / "voc_2007_test.mat"
    boxes = np.empty((1, 2), dtype=object)
    boxes[0, 0] = np.array([[1, 1, 2, 2]], np.float64)
    boxes[0, 1] = np.array([[3, 4, 6, 8]], np.float64)
    images = np.empty((2, 1), dtype=object)
    images[0, 0], images[1, 0] = "000001", "000002"
    scipy.io.savemat(path, {"boxes": boxes, "images": images})
    p = read_proposals(path, image_size=(10, 10), image_name="000002.jpg")
    np.testing.assert_array_equal(p.boxes, [[3, 2, 8, 6]])
    with pytest.raises(InputError, match="no boxes for image"):
        read_box_mat(path, (10, 10), "000003")
    with pytest.raises(InputError, match="say which image"):
        read_box_mat(path, (10, 10))


def test_npz_round_trip_and_dense_masks(tmp_path):
    m = np.zeros((2, 6, 7), bool)
    m[0, 1:4, 2:6] = True
    m[1, 5, 6] = True
    p = Proposals((6, 7), masks=mask_ops.encode_many(m), objectness=[0.3, 0.8])
    write_npz(tmp_path / "a.npz", p)
    back = read_npz(tmp_path / "a.npz")
    np.testing.assert_array_equal(back.mask_array(), m)
    np.testing.assert_array_equal(back.boxes, [[2, 1, 6, 4], [6, 5, 7, 6]])
    assert list(tmp_path.iterdir()) == [tmp_path / "a.npz"]  # no temporary left behind
    np.savez(tmp_path / "b.npz", boxes=np.zeros((2, 4)), scores=np.ones(2), image_size=[6, 7], masks=m)
    np.testing.assert_array_equal(read_proposals(tmp_path / "b.npz").mask_array(), m)


def test_unreadable_files_raise_input_error(tmp_path):
    (tmp_path / "x.mat").write_text("not a mat file")
    with pytest.raises(InputError, match="x.mat"):
        read_proposals(tmp_path / "x.mat", image_size=(4, 4))
    np.savez(tmp_path / "y.npz", boxes=np.zeros((1, 4)))
    with pytest.raises(InputError, match="missing array 'scores'"):
        read_npz(tmp_path / "y.npz")
    scipy.io.savemat(tmp_path / "z.mat", {"something": np.ones(3)})
    with pytest.raises(InputError, match="no 'boxes' field"):
        read_proposals(tmp_path / "z.mat", image_size=(4, 4))
    with pytest.raises(InputError, match="not found"):
        read_npz(tmp_path / "missing.npz")
    with pytest.raises(InputError, match="unknown proposal file type"):
        read_proposals(tmp_path / "p.txt")
