"""SGPO (Eqs. 4-8) on a hand-drawn 10x10 scene; every expected value is worked out in a comment."""
import numpy as np
import pytest
import torch

from wsis.methods.mser_sgpo.sgpo import SGPOConfig, class_irrelevant_maps, sgpo_retrieve, sgpo_scores, sgpo_terms
from wsis.proposals.retrieval import contour_masks

torch.set_num_threads(1)
H = W = 10


def _box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _scene():
    e = np.zeros((1, H, W), np.float32)  # one representation, mass 1
    e[0, 3, 3], e[0, 3, 4], e[0, 7, 7] = 0.5, 0.25, 0.25
    sal = np.full((H, W), 0.5, np.float32)
    sal[:, :5] = 1.0  # left half fully salient
    f = np.zeros((1, H, W), np.float32)  # class map: sum 18, mean 0.18, min -2
    f[0, 3, 3] = f[0, 3, 4] = 10.0
    f[0, 7, 7] = -2.0
    masks = np.stack([
        _box(2, 5, 2, 5),  # A: 3x3 box, holds (3,3) and (3,4)
        _box(7, 9, 7, 9),  # B: 2x2 box, holds (7,7)
        np.ones((H, W), bool),  # C: the whole image, beyond the 85% size limit
    ])
    return e, sal, f, masks


def test_class_irrelevant_maps():
    _, _, f, _ = _scene()
    gap = class_irrelevant_maps(f, "gap")[0]
    # below the mean 0.18: the 97 zeros -> (0.18 - 0) / (0.18 + 2) and (7,7) -> 1; the 10s -> 0
    assert gap[0, 0] == pytest.approx(0.18 / 2.18) and gap[7, 7] == pytest.approx(1.0) and gap[3, 3] == 0
    lit = class_irrelevant_maps(f, "literal")[0]
    assert lit[7, 7] == -2 and lit[0, 0] == 0 and lit[3, 3] == 0
    binary = class_irrelevant_maps(f, "binary")[0]
    assert binary.sum() == 98 and binary[3, 3] == 0


def test_terms_by_hand():
    e, sal, f, masks = _scene()
    t = sgpo_terms(e, np.array([0]), f, sal, masks[:2], contour_masks(masks[:2], 3), "gap")
    # ins: A holds 0.5 + 0.25, B holds 0.25
    np.testing.assert_allclose(t["ins"][0], [0.75, 0.25], rtol=1e-6)
    # bou: A's contour (5x5 dilation minus the eroded centre (3,3)) holds (3,4) = 0.25;
    #      B's 2x2 box erodes to nothing, so its contour is the 4x4 dilation, holding (7,7) = 0.25
    np.testing.assert_allclose(t["bou"][0], [0.25, 0.25], rtol=1e-6)
    # cla: A has 7 zero pixels below the mean -> -7 * 0.18/2.18; B has 3 zeros and (7,7) -> -(0.54/2.18 + 1)
    np.testing.assert_allclose(t["cla"][0], [-1.26 / 2.18, -(0.54 / 2.18 + 1)], rtol=1e-5)
    # sal: A lies in the salient half: 0.5 * 1 + 0.25 * 1; B: 0.25 * 0.5
    np.testing.assert_allclose(t["sal"][0], [0.75, 0.125], rtol=1e-6)
    # the paper's literal map rewards B for covering the negative response at (7,7): -(-2) = +2
    lit = sgpo_terms(e, np.array([0]), f, sal, masks[:2], contour_masks(masks[:2], 3), "literal")
    np.testing.assert_allclose(lit["cla"][0], [0.0, 2.0], atol=1e-6)


def test_eq4_weights_and_size_limit():
    e, sal, f, masks = _scene()
    cfg = SGPOConfig(alpha=0.8, beta=1.0, gamma=0.1, omega=1.0, contour_width=3, gamma_reference_area=None)
    s = sgpo_scores(e, np.array([0]), f, sal, masks, cfg)[0]
    # A: 0.8*0.75 + 0.25 - 0.1*1.26/2.18 + 0.75;  B: 0.8*0.25 + 0.25 - 0.1*(0.54/2.18 + 1) + 0.125
    np.testing.assert_allclose(s[:2], [1.6 - 0.0126 / 0.0218 * 0.1, 0.575 - 0.1 * (0.54 / 2.18 + 1)], rtol=1e-5)
    assert s[2] == -np.inf
    # at the reference area 448*448 = 200704 px, this 100-px image multiplies gamma by 2007.04
    scaled = sgpo_scores(e, np.array([0]), f, sal, masks, SGPOConfig(gamma=0.1, contour_width=3,
                                                                      gamma_reference_area=448 * 448))[0]
    np.testing.assert_allclose(scaled[0] - s[0], -(2007.04 - 1) * 0.1 * 1.26 / 2.18, rtol=1e-5)


def test_saliency_term_decides_between_equal_proposals():
    e = np.zeros((1, H, W), np.float32)
    e[0, 3, 3] = e[0, 7, 7] = 0.5  # the centres of two 3x3 boxes: no contour mass in either
    masks = np.stack([_box(2, 5, 2, 5), _box(6, 9, 6, 9)])
    sal = np.zeros((H, W), np.float32)
    sal[5:, 5:] = 1.0  # only the second box is salient
    f = np.zeros((1, H, W), np.float32)
    without = SGPOConfig(gamma=0.0, omega=0.0, contour_width=3, nms_threshold=None)
    with_sal = SGPOConfig(gamma=0.0, omega=1.0, contour_width=3, nms_threshold=None)
    # without saliency both score 0.8 * 0.5 and the first wins the tie; with it the second gains 0.5
    assert sgpo_retrieve(e, np.array([0]), f, sal, masks, without).proposal_index.tolist() == [0]
    found = sgpo_retrieve(e, np.array([0]), f, sal, masks, with_sal)
    assert found.proposal_index.tolist() == [1] and found.scores[0] == pytest.approx(0.4 + 0.5)


def test_nms_merges_parts_that_chose_the_same_proposal():
    e = np.zeros((3, H, W), np.float32)
    e[0, 3, 3] = 1.0  # two parts of the object in box A ...
    e[1, 2, 3] = 1.0
    e[2, 7, 7] = 1.0  # ... and another object in box B
    masks = np.stack([_box(2, 5, 2, 5), _box(6, 9, 6, 9)])
    sal = np.ones((H, W), np.float32)
    f = np.zeros((3, H, W), np.float32)
    cfg = SGPOConfig(gamma=0.0, contour_width=3, nms_threshold=0.3)
    found = sgpo_retrieve(e, np.array([0, 1, 2]), f, sal, masks, cfg)
    # part 1 sits on A's contour: 0.8 + 1 + 1 = 2.8 beats part 0 (0.8 + 0 + 1 = 1.8) and object B (1.8);
    # part 0 chose the same box (IoU 1 >= 0.3) and is suppressed, object B's box does not overlap
    assert found.peak_index.tolist() == [1, 2]
    assert sorted(found.proposal_index.tolist()) == [0, 1]
    merged = found.prms[0]
    assert merged[3, 3] == 1.0 and merged[2, 3] == 1.0  # part 0's map merged into part 1's
    assert len(found.scores) == 2


def test_empty_inputs():
    f = np.zeros((1, H, W), np.float32)
    sal = np.zeros((H, W), np.float32)
    assert len(sgpo_retrieve(np.zeros((0, H, W), np.float32), np.zeros(0), f, sal, np.zeros((3, H, W), bool)).scores) == 0
    with pytest.raises(ValueError):
        sgpo_retrieve(np.zeros((1, H, W), np.float32), np.zeros(1), f, np.zeros((4, 4)), np.zeros((3, H, W), bool))
