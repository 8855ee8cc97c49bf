"""PDSL's stages on hand-made inputs with answers computed by hand: WSDDN scores and Eq. 2, OICR
pseudo labels and Eq. 3, seed acquisition and its GrabCut cache, mask targets, Eq. 5 weighting,
the correlation loss (Eqs. 7-8)."""
import math

import numpy as np
import pytest
import torch

from wsis.detectors.wsddn import (mil_loss, oicr_pseudo_labels, refinement_loss, segment_softmax,
                                  wsddn_scores)
from wsis.methods.pdsl.masks import (correlation_loss, lse_activation, mask_targets, sample_mask_rois,
                             segmentation_loss)
from wsis.methods.pdsl.seeds import GrabCutCache, assign_seeds

torch.set_num_threads(1)
ln = math.log


# ---------------------------------------------------------------- WSDDN, Eq. 2

def test_wsddn_scores_on_a_2x3_example():
    # class softmax per row: [0, 0, ln2] -> [1/4, 1/4, 1/2]; [ln3, 0, 0] -> [3/5, 1/5, 1/5]
    cls = torch.tensor([[0.0, 0.0, ln(2)], [ln(3), 0.0, 0.0]])
    # proposal softmax per column: [0, 0] -> 1/2, 1/2; [ln3, 0] -> 3/4, 1/4; [0, ln4] -> 1/5, 4/5
    det = torch.tensor([[0.0, ln(3), 0.0], [0.0, 0.0, ln(4)]])
    s0, y = wsddn_scores(cls, det, torch.zeros(2, dtype=torch.long), 1)
    want = torch.tensor([[1 / 8, 3 / 16, 1 / 10], [3 / 10, 1 / 20, 4 / 25]])
    torch.testing.assert_close(s0, want)
    torch.testing.assert_close(y, torch.tensor([[0.425, 0.2375, 0.26]]))
    # Eq. 2 summed over classes: tags (1, 0, 1)
    loss = mil_loss(y, torch.tensor([[1.0, 0.0, 1.0]]))
    assert loss.item() == pytest.approx(-(ln(0.425) + ln(1 - 0.2375) + ln(0.26)), rel=1e-6)


def test_proposal_softmax_stays_within_each_image():
    cls = torch.tensor([[0.0, 0.0, ln(2)], [ln(3), 0.0, 0.0], [0.0, ln(2), ln(2)]])
    det = torch.tensor([[0.0, ln(3), 0.0], [0.0, 0.0, ln(4)], [5.0, -5.0, 1.0]])
    segments = torch.tensor([0, 0, 1])
    s0, y = wsddn_scores(cls, det, segments, 2)
    # image 1 has one proposal: its proposal softmax is 1, so y = the class softmax [1/5, 2/5, 2/5]
    torch.testing.assert_close(y[1], torch.tensor([0.2, 0.4, 0.4]))
    torch.testing.assert_close(y[0], torch.tensor([0.425, 0.2375, 0.26]))
    x = torch.randn(7, 4)
    seg = torch.tensor([0, 1, 0, 2, 1, 0, 2])
    out = segment_softmax(x, seg, 3)
    for s in range(3):
        torch.testing.assert_close(out[seg == s], x[seg == s].softmax(dim=0))


# ---------------------------------------------------------------- OICR, Eq. 3

BOXES = torch.tensor([
    [0, 0, 10, 10],    # A: top of class 0
    [0, 0, 10, 8],     # B: IoU with A 0.8 -> class 0
    [0, 0, 10, 4],     # C: IoU with A 0.4 -> background, weight of A
    [20, 20, 30, 30],  # D: top of class 2
    [5, 0, 15, 10],    # E: IoU with A 50/150 -> background, weight of A
    [20, 20, 30, 25],  # F: IoU with D exactly 0.5 -> class 2
    [40, 40, 42, 42],  # G: overlaps nothing -> ignored (weight 0)
], dtype=torch.float32)


def _previous_scores():
    s = torch.full((7, 3), 0.05)
    s[0, 0], s[3, 2] = 0.9, 0.6
    s[6, 1] = 0.99  # class 1 is not tagged: its top proposal must play no part
    return s


def test_oicr_pseudo_labels_top_proposal_and_iou_rule():
    t = oicr_pseudo_labels(BOXES, _previous_scores(), torch.tensor([1.0, 0.0, 1.0]), fg_iou=0.5, ignore_iou=0.1)
    assert t.top.tolist() == [0, 3] and t.classes.tolist() == [0, 2]
    assert t.labels.tolist() == [1, 1, 0, 3, 0, 3, 0]
    torch.testing.assert_close(t.weights, torch.tensor([0.9, 0.9, 0.9, 0.6, 0.9, 0.6, 0.0]))
    torch.testing.assert_close(t.gt_boxes[1], BOXES[0])
    torch.testing.assert_close(t.gt_boxes[5], BOXES[3])
    # without the ignore band, G is background with the weight of the box it was compared with (A)
    t0 = oicr_pseudo_labels(BOXES, _previous_scores(), torch.tensor([1.0, 0.0, 1.0]), ignore_iou=0.0)
    assert t0.weights[6].item() == pytest.approx(0.9)


def test_untagged_image_has_no_pseudo_ground_truth():
    t = oicr_pseudo_labels(BOXES, _previous_scores(), torch.zeros(3))
    assert t.labels.tolist() == [0] * 7 and t.weights.sum().item() == 0 and len(t.top) == 0


def test_refinement_loss_weights_and_box_regression_by_hand():
    t = oicr_pseudo_labels(BOXES, _previous_scores(), torch.tensor([1.0, 0.0, 1.0]))
    logits = torch.zeros(7, 4)  # uniform over 3 classes + background: CE = ln 4 everywhere
    deltas = torch.zeros(7, 12)
    cls, box = refinement_loss(logits, deltas, BOXES, t)
    assert cls.item() == pytest.approx((0.9 * 4 + 0.6 * 2) * ln(4) / 7, rel=1e-6)
    # Fast R-CNN deltas (weights 10, 10, 5, 5) of the pseudo boxes from the foreground proposals:
    # A->A and D->D: 0. B [0,0,10,8] -> A: dy = 10 * (5 - 4) / 8 = 1.25, dh = 5 ln(10/8);
    # F [20,20,30,25] -> D: dy = 10 * (25 - 22.5) / 5 = 5, dh = 5 ln 2. Smooth L1 (beta 1): |d| - 0.5.
    b = (1.25 - 0.5) + (5 * ln(10 / 8) - 0.5)
    f = (5 - 0.5) + (5 * ln(2) - 0.5)
    assert box.item() == pytest.approx((0.9 * b + 0.6 * f) / 7, rel=1e-5)


# ---------------------------------------------------------------- seed acquisition

SEED_BOXES = torch.tensor([
    [0, 0, 10, 10],    # 0: top proposal of the first tagged class
    [0, 0, 10, 9],     # 1: IoU 0.9
    [0, 0, 10, 5],     # 2: IoU 0.5
    [1, 0, 11, 10],    # 3: IoU 90/110 = 0.82
    [30, 30, 40, 40],  # 4: IoU 0
    [0, 0, 10, 6],     # 5: IoU 0.6
], dtype=torch.float32)


def test_seeds_are_the_n_seed_highest_iou_neighbours_and_others_copy_the_best_seed():
    a = assign_seeds(SEED_BOXES, torch.tensor([0]), n_seed=3)
    assert a.seeds.tolist() == [0, 1, 3]  # IoU order 0 (1.0), 1 (0.9), 3 (0.82) | 5, 2, 4
    # 2 [0,0,10,5]: IoU with seeds 0, 1, 3 = 0.5, 50/90, 45/105 -> seed 1; 5: 0.6, 60/90, 54/106 -> 1;
    # 4 overlaps no seed: the first (proposal 0)
    assert a.seeds[a.source].tolist() == [0, 1, 1, 3, 0, 1]


def test_seeds_of_two_classes_are_pooled():
    # second class: top 4; its 3 nearest are 4 (IoU 1) and then 0, 1 (IoU 0, lowest indices first)
    a = assign_seeds(SEED_BOXES, torch.tensor([0, 4]), n_seed=3)
    assert a.seeds.tolist() == [0, 1, 3, 4]
    assert a.seeds[a.source].tolist() == [0, 1, 1, 3, 4, 1]
    one = assign_seeds(SEED_BOXES, torch.tensor([0]), n_seed=1)
    assert one.seeds.tolist() == [0] and one.source.tolist() == [0] * 6
    none = assign_seeds(SEED_BOXES, torch.zeros(0, dtype=torch.long), n_seed=3)
    assert len(none.seeds) == 0


def _image(tmp_path, name="a.png", value=10):
    from PIL import Image

    path = tmp_path / name
    Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(path)
    return path


def _box_filler(calls):
    def fake(image, box):
        calls.append(tuple(np.round(box, 2)))
        m = np.zeros(image.shape[:2], bool)
        x0, y0, x1, y1 = (int(v) for v in box)
        m[y0:y1, x0:x1] = True
        return m
    return fake


def test_grabcut_cache_computes_each_box_once_and_persists(tmp_path):
    path = _image(tmp_path)
    calls = []
    cache = GrabCutCache(tmp_path / "gc", grabcut_fn=_box_filler(calls))
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 15]], np.float32)
    masks = cache.masks(path, boxes)
    assert masks.shape == (2, 20, 30) and masks[0].sum() == 100 and masks[1].sum() == 150
    again = cache.masks(path, boxes[::-1])
    assert len(calls) == 2 and (again[0] == masks[1]).all()
    # a new cache object (a resumed run) reads the file: no GrabCut at all
    fresh_calls = []
    fresh = GrabCutCache(tmp_path / "gc", grabcut_fn=_box_filler(fresh_calls))
    assert (fresh.masks(path, boxes) == masks).all() and fresh_calls == [] and fresh.computed == 0
    fresh.masks(path, np.array([[1, 1, 4, 4]], np.float32))
    assert fresh_calls == [(1.0, 1.0, 4.0, 4.0)]
    # other settings are another cache entry; a corrupt entry is recomputed, not an error
    assert GrabCutCache(tmp_path / "gc", iterations=1).entry(path) != fresh.entry(path)
    fresh.entry(path).write_bytes(b"not an npz")
    calls3 = []
    assert GrabCutCache(tmp_path / "gc", grabcut_fn=_box_filler(calls3)).masks(path, boxes).sum() == 250
    assert len(calls3) == 2


def test_opencv_grabcut_is_the_same_whatever_ran_before(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 80, (40, 40, 3)).astype(np.uint8)
    image[10:30, 12:28] = rng.integers(150, 255, (20, 16, 3))
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "b.png")
    box = np.array([[8, 6, 32, 34]], np.float32)
    first = GrabCutCache(tmp_path / "one").masks(tmp_path / "b.png", box)
    cv2.setRNGSeed(12345)
    cv2.randu(np.zeros((50, 50), np.float32), 0, 1)  # move OpenCV's generator on
    second = GrabCutCache(tmp_path / "two").masks(tmp_path / "b.png", box)
    assert (first == second).all() and first.any()


# ---------------------------------------------------------------- mask targets, sampling

def test_mask_targets_copy_the_assigned_seed_inside_the_roi():
    seeds = torch.zeros(2, 8, 8)
    seeds[0, :, :4] = 1  # seed 0: left half of the image
    seeds[1, :4, :] = 1  # seed 1: top half
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 4.0, 8.0]])
    t = mask_targets(seeds, torch.tensor([0, 1, 1]), boxes, size=4)
    left = torch.zeros(4, 4)
    left[:, :2] = 1
    top = torch.zeros(4, 4)
    top[:2] = 1
    torch.testing.assert_close(t[0], left)
    torch.testing.assert_close(t[1], top)
    torch.testing.assert_close(t[2], top)  # the left half of the image, top half of it
    mirrored = mask_targets(seeds, torch.tensor([0]), boxes[:1], size=4, flip=True)
    torch.testing.assert_close(mirrored[0], left.flip(-1))


def test_mask_roi_sample_is_seeded_and_balanced():
    fg = torch.tensor([True, False, True, False, False, True, False, False, False, False])
    g = torch.Generator().manual_seed(3)
    pick = sample_mask_rois(fg, 4, 0.5, g)
    assert len(pick) == 4 and int(fg[pick].sum()) == 2 and pick.tolist() == sorted(pick.tolist())
    again = sample_mask_rois(fg, 4, 0.5, torch.Generator().manual_seed(3))
    assert pick.tolist() == again.tolist()
    assert sample_mask_rois(fg, None, 0.5, g).tolist() == list(range(10))
    # 7 foreground, 3 background, 8 wanted at 25% foreground: all 3 background, the other 5 foreground
    picked = sample_mask_rois(~fg, 8, 0.25, g)
    assert len(picked) == 8 and int((~fg)[picked].sum()) == 5


# ---------------------------------------------------------------- Eq. 5

def test_eq5_class_specific_terms_are_weighted_by_image_scores_and_learn_from_the_previous_head():
    agnostic = torch.zeros(2, 2, 2, requires_grad=True)                       # p = 0.5
    specific = torch.stack([torch.zeros(2, 2, 2), torch.full((2, 2, 2), ln(3))]).requires_grad_()  # 0.5, 0.75
    targets = torch.ones(2, 2, 2)
    weights = torch.tensor([0.8, 0.0])  # RoI 1 is background: no class-specific loss
    first, rest = segmentation_loss(agnostic, specific, targets, weights)
    assert first.item() == pytest.approx(ln(2), rel=1e-6)  # BCE(0.5, 1) on every pixel, mean over 2 RoIs
    head1 = ln(2)                                          # BCE(0.5 | target 0.5)
    head2 = -(0.5 * ln(0.75) + 0.5 * ln(0.25))             # BCE(0.75 | target head 1 = 0.5)
    assert rest.item() == pytest.approx(0.8 * (head1 + head2) / 2, rel=1e-6)
    rest.backward()
    assert agnostic.grad is None or (agnostic.grad == 0).all()  # targets are detached
    assert (specific.grad[:, 1] == 0).all()                      # weight 0
    hard_first, hard = segmentation_loss(agnostic, specific, targets, weights, hard_targets=True)
    # hard targets: 0.5 >= 0.5 -> 1 for both heads: BCE(0.5 | 1) + BCE(0.75 | 1)
    assert hard.item() == pytest.approx(0.8 * (ln(2) - ln(0.75)) / 2, rel=1e-6)


# ---------------------------------------------------------------- Eqs. 7-8

def test_lse_activation_matches_the_formula():
    m = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert lse_activation(m, 5.0).item() == pytest.approx(ln((2 + 2 * math.exp(5)) / 4) / 5, rel=1e-6)
    assert lse_activation(torch.full((3, 3), 0.3), 5.0).item() == pytest.approx(0.3, rel=1e-6)
    # tau -> large approaches the max, small approaches the mean
    assert lse_activation(m, 200.0).item() == pytest.approx(1 - ln(2) / 200, rel=1e-4)


def test_correlation_loss_by_hand():
    masks = torch.stack([torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.full((2, 2), 0.5)])[None]  # (1, 2, 2, 2)
    det = torch.tensor([0.8, 0.1])
    a0 = ln((2 + 2 * math.exp(5)) / 4) / 5
    both = correlation_loss(masks, det, torch.tensor([True, True]), 5.0)
    assert both.item() == pytest.approx((abs(a0 - 0.8) + 0.4) / 2, rel=1e-6)
    # a background RoI adds nothing but still counts in 1/n^P; two heads add up (Eq. 6)
    one = correlation_loss(masks, det, torch.tensor([True, False]), 5.0)
    assert one.item() == pytest.approx(abs(a0 - 0.8) / 2, rel=1e-6)
    two = correlation_loss(torch.cat([masks, masks]), det, torch.tensor([True, False]), 5.0)
    assert two.item() == pytest.approx(2 * one.item(), rel=1e-6)
    assert correlation_loss(masks[:0], det, torch.tensor([True, True])).item() == 0.0


def test_relative_detection_activation_divides_by_each_class_best_proposal_per_image():
    from wsis.methods.pdsl.model import relative_to_best

    # image 0: proposals 0-2, image 1: proposals 3-4; two classes
    scores = torch.tensor([[0.2, 0.05], [0.1, 0.10], [0.4, 0.02], [0.3, 0.0], [0.6, 0.0]], requires_grad=True)
    segments = torch.tensor([0, 0, 0, 1, 1])
    rel = relative_to_best(scores, segments, 2)
    expected = torch.tensor([[0.5, 0.5], [0.25, 1.0], [1.0, 0.2], [0.5, 0.0], [1.0, 0.0]])
    assert torch.allclose(rel, expected, atol=1e-6)
    # the maximum is a constant: d rel / d score = 1 / max for every proposal, the best one included
    rel[:, 0].sum().backward()
    assert torch.allclose(scores.grad[:, 0], torch.tensor([2.5, 2.5, 2.5, 1 / 0.6, 1 / 0.6]), atol=1e-5)


# ---------------------------------------------------------------- inference selection

def test_detections_are_ranked_and_suppressed_per_class():
    from wsis.methods.pdsl.config import PDSLTestConfig
    from wsis.methods.pdsl.inference import select_detections

    # 3 proposals x 2 classes; proposals 0 and 1 overlap with IoU 0.81, proposal 2 is apart
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 8.1], [20.0, 20.0, 30.0, 30.0]])
    boxes = b[:, None].expand(3, 2, 4)
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.05, 0.3]])
    kept_boxes, classes, kept = select_detections(scores, boxes, PDSLTestConfig(nms_threshold=0.5))
    # class 0: 0.9 (p0) suppresses 0.8 (p1), keeps 0.05 (p2); class 1: 0.7 (p1) suppresses 0.1 (p0), keeps 0.3
    assert kept.tolist() == pytest.approx([0.9, 0.7, 0.3, 0.05])
    assert classes.tolist() == [0, 1, 1, 0]
    torch.testing.assert_close(kept_boxes[1], b[1])
    top2 = select_detections(scores, boxes, PDSLTestConfig(detections_per_image=2, score_threshold=0.2))
    assert top2[2].tolist() == pytest.approx([0.9, 0.7])
