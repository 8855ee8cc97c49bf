import numpy as np

from wsis.proposals.retrieval import RetrievalConfig, contour_masks, instance_nms, proposal_scores, retrieve


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_contour_is_morphological_gradient():
    m = _box(9, 9, 3, 6, 3, 6)  # 3x3 square
    c = contour_masks(m[None], 3)[0]
    # dilation by 3x3 gives the 5x5 square rows/cols 2..6, erosion keeps only the centre (4, 4)
    expected = _box(9, 9, 2, 7, 2, 7)
    expected[4, 4] = False
    assert (c == expected).all()


def test_scores_by_hand_without_contour():
    h = w = 10
    prm = np.zeros((h, w), np.float32)
    prm[2:5, 2:5] = 1 / 9  # unit mass on a 3x3 block
    class_map = np.zeros((1, h, w), np.float32)
    class_map[0, 2:5, 2:5] = 1.0  # mean 0.09; background = response < 0.5 * 0.09 -> 91 pixels
    masks = np.stack([
        _box(h, w, 2, 5, 2, 5),  # exactly the block: 1.0 mass, 0 background
        _box(h, w, 0, 6, 0, 6),  # 36 px: 1.0 mass, 27 background px
        _box(h, w, 2, 3, 2, 3),  # 1 px: 1/9 mass
        np.ones((h, w), bool),  # 100% of the image: skipped by the 85% limit
    ])
    cfg = RetrievalConfig(alpha=0.8, gamma=0.01, bg_threshold_factor=0.5, contour_width=1,
                          gamma_reference_area=None)
    s = proposal_scores(prm[None], np.array([0]), class_map, masks, cfg)[0]
    np.testing.assert_allclose(s[:3], [0.8, 0.8 - 0.27, 0.8 / 9], rtol=1e-5)
    assert s[3] == -np.inf


def test_retrieve_picks_best_and_nms_merges_prms():
    h = w = 12
    a = np.zeros((h, w), np.float32)
    a[2:5, 2:5] = 1 / 9
    b = np.zeros((h, w), np.float32)
    b[3:5, 3:5] = 1 / 4  # a second peak of the same object
    c = np.zeros((h, w), np.float32)
    c[8:11, 8:11] = 1 / 9  # another object
    prms = np.stack([a, b, c])
    masks = np.stack([_box(h, w, 2, 5, 2, 5), _box(h, w, 8, 11, 8, 11), _box(h, w, 0, 6, 0, 6)])
    class_maps = np.ones((2, h, w), np.float32)
    cfg = RetrievalConfig(gamma=0.0, contour_width=1, nms_threshold=0.3)
    out = retrieve(prms, np.array([0, 0, 1]), class_maps, masks, cfg)
    # peaks 0 and 1 both choose proposal 0 (first best of equal scores 0.8); NMS keeps one and merges
    assert sorted(out.proposal_index.tolist()) == [0, 1]
    first = out.proposal_index.tolist().index(0)
    np.testing.assert_allclose(out.prms[first].sum(), 2.0, rtol=1e-6)


def test_instance_nms_class_aware_keeps_other_class():
    m = _box(6, 6, 0, 3, 0, 3)
    masks = np.stack([m, m])
    keep, _ = instance_nms(np.array([0.9, 0.8]), masks, None, 0.3, labels=np.array([0, 1]))
    assert keep.tolist() == [0, 1]
    keep, _ = instance_nms(np.array([0.9, 0.8]), masks, None, 0.3)
    assert keep.tolist() == [0]


def test_penalty_rescaled_to_reference_area():
    h = w = 10
    prm = np.zeros((1, h, w), np.float32)
    class_map = np.zeros((1, h, w), np.float32)
    class_map[0, :5] = 1.0  # mean 0.5: background = the lower 50 pixels
    mask = np.ones((1, h, w), bool)
    mask[0, 0, 0] = False  # 99 px: 99% of the image, so the size limit is lifted to 1.0 below
    cfg = RetrievalConfig(gamma=0.01, contour_width=1, size_limit=(0.0, 1.0), gamma_reference_area=400)
    # 50 background pixels * 0.01 * 400 / 100 = 2.0
    np.testing.assert_allclose(proposal_scores(prm, np.array([0]), class_map, mask, cfg)[0, 0], -2.0)


def test_support_is_thresholded_fraction_of_max():
    from wsis.proposals.retrieval import support_masks

    prm = np.zeros((1, 6, 6), np.float32)
    prm[0, 1, 1], prm[0, 1, 2], prm[0, 4, 4] = 1.0, 0.5, 0.1
    sup = support_masks(prm, 0.4, 0.0)[0]
    assert sup.sum() == 2 and sup[1, 1] and sup[1, 2]
    assert not support_masks(np.zeros((1, 4, 4), np.float32), 0.2, 0.05).any()  # empty map: empty support


def test_support_smoothing_fills_the_region_between_edge_responses():
    from wsis.proposals.retrieval import support_masks

    # a PRM that fires only on the outline of a 10x10 square (as on edges): smoothed, the inside is support
    prm = np.zeros((1, 30, 30), np.float32)
    square = _box(30, 30, 10, 20, 10, 20)
    prm[0] = contour_masks(square[None], 3)[0] & square
    assert not support_masks(prm, 0.5, 0.0)[0, 15, 15]
    sup = support_masks(prm, 0.5, 0.1)[0]  # sigma 3 px on a 10 px square
    assert sup[15, 15] and not sup[2, 2]


def test_iou_score_prefers_the_proposal_matching_the_support_over_a_larger_one():
    h = w = 20
    prm = np.zeros((1, h, w), np.float32)
    prm[0, 5:10, 5:10] = 1 / 25
    masks = np.stack([_box(h, w, 5, 10, 5, 10), _box(h, w, 0, 15, 0, 15), _box(h, w, 5, 7, 5, 10)])
    class_maps = np.ones((1, h, w), np.float32)
    prm_cfg = RetrievalConfig(contour_width=1, gamma=0.0)
    s = proposal_scores(prm, np.array([0]), class_maps, masks, prm_cfg)[0]
    assert s[1] >= s[0]  # Eq. 10: the larger proposal holds the same mass (and some on its contour)
    iou_cfg = RetrievalConfig(score="iou", support_threshold=0.5, support_sigma=0.0)
    s = proposal_scores(prm, np.array([0]), class_maps, masks, iou_cfg)[0]
    np.testing.assert_allclose(s, [1.0, 25 / 225, 10 / 25])
