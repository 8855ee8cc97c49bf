"""Label-PEnet's parts against hand-computed answers: Eqs. 1-2, Excitation BP (numpy marginal winning
probabilities), the instance attention map, the weighted losses of Eqs. 3-4, the beta rule, the CRF."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from wsis.cues.crf import CRFConfig, crf_available, dense_crf
from wsis.cues.excitation import excitation_maps
from wsis.methods.labelpenet.calibration import (Group, background_map, calibrate, instance_attention,
                                                 instance_groups)
from wsis.methods.labelpenet.curriculum import phase_of, proposal_labels
from wsis.methods.labelpenet.model import (classification_scores, multilabel_loss, weighted_rcnn_loss,
                                           weighted_rpn_loss)

torch.set_num_threads(1)


# ---------------------------------------------------------------- Eqs. 1-2

def test_eqs_1_2_three_proposals_two_classes():
    xc = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    xp = torch.tensor([[0.0, 0.0], [math.log(2), 0.0], [0.0, math.log(3)]])
    segments = torch.zeros(3, dtype=torch.long)
    x1, s1 = classification_scores(xc, xp, segments, 1)
    # w^p: class 0 softmax([0, ln2, 0]) = [1, 2, 1] / 4; class 1 softmax([0, 0, ln3]) = [1, 1, 3] / 5
    torch.testing.assert_close(x1, torch.tensor([[0.25, 0.0], [0.0, 0.2], [0.5, 0.6]]))
    torch.testing.assert_close(s1, torch.tensor([[0.75, 0.8]]))
    # p = softmax([0.75, 0.8]); Eq. 2 with y = [1, 0]: -log p_0 = log(1 + e^0.05)
    assert multilabel_loss(s1, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(math.log(1 + math.exp(0.05)), abs=1e-6)
    # y = [1, 1] is normalised to [1/2, 1/2]
    both = (math.log(1 + math.exp(0.05)) + math.log(1 + math.exp(-0.05))) / 2
    assert multilabel_loss(s1, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(both, abs=1e-6)


def test_eq_1_softmax_is_per_image():
    xc = torch.ones(3, 1)
    xp = torch.tensor([[0.0], [5.0], [1.0]])
    _, s1 = classification_scores(xc, xp, torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(s1, torch.ones(2, 1))  # each image's proposal weights sum to 1


# ---------------------------------------------------------------- Excitation BP

def _numpy_mwp(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, cls: int, a: float) -> np.ndarray:
    """Marginal winning probabilities of the inputs of relu(x W1^T + b1) W2^T + b2 (biases enter the
    activations only), with the shift x' = x - min(x) of the shared rule."""
    def down(inp, w, p_out):
        shifted = inp - inp.min()
        z = shifted @ np.maximum(w, 0).T                      # (out,)
        share = np.where(z > 1e-10, p_out / np.where(z > 1e-10, z, 1), 0.0)
        return shifted * (share @ np.maximum(w, 0))          # (in,)
    h = np.maximum(x @ w1.T + b1, 0)
    p_out = np.zeros(w2.shape[0])
    p_out[cls] = a
    return down(x, w1, down(h, w2, p_out))


@pytest.mark.parametrize("x", [[0.0, 1.0, 2.0, 0.5], [-1.0, 0.5, 2.0, 1.0]])
def test_excitation_bp_two_layers_matches_numpy(x):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[0.5, -1.0, 1.0, 0.2], [1.0, 0.3, -0.5, 0.0], [0.2, 0.2, 0.2, 0.2]]))
        net[3].weight.copy_(torch.tensor([[1.0, -0.5, 0.5], [0.3, 1.0, -1.0]]))
    pooled = torch.tensor(x).view(1, 1, 4, 1)                 # one proposal, D = 1 channel, a 4 x 1 "RoI"
    for cls, a in [(0, 0.7), (1, 1.0)]:
        maps = excitation_maps(net, net, pooled, torch.tensor([cls]), torch.tensor([a]))
        expected = _numpy_mwp(np.array(x), net[1].weight.detach().numpy(), net[1].bias.detach().numpy(),
                              net[3].weight.detach().numpy(), cls, a)
        np.testing.assert_allclose(maps[0, :, 0].numpy(), expected, rtol=1e-5, atol=1e-7)
        assert maps.sum().item() == pytest.approx(a, rel=1e-5)   # probability is conserved


def test_excitation_bp_is_per_proposal_and_restores_the_head():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    net.train()
    pooled = torch.rand(3, 2, 2, 2)
    together = excitation_maps(net, net, pooled, torch.tensor([0, 2, 1]), torch.tensor([1.0, 0.5, 0.2]))
    alone = excitation_maps(net, net, pooled[1:2], torch.tensor([2]), torch.tensor([0.5]))
    torch.testing.assert_close(together[1:2], alone)
    assert net.training and "forward" not in net[1].__dict__
    x = torch.rand(2, 8)
    torch.testing.assert_close(net(x).detach(), nn.functional.linear(torch.relu(net[1](x)), net[3].weight, net[3].bias).detach())


# ---------------------------------------------------------------- calibration

def test_instance_attention_of_two_overlapping_proposals():
    boxes = np.array([[0, 0, 4, 4], [2, 2, 6, 6]], np.float32)   # IoU 4 / 28 = 0.14
    scores = np.array([0.9, 0.6], np.float32)
    classes = np.array([0, 0])
    tags = np.array([True, False])
    groups = instance_groups(boxes, scores, classes, tags, nms_iou=0.1, max_instances=5, min_relative_score=0.0)
    assert len(groups) == 1 and groups[0].top == 0 and groups[0].members.tolist() == [0, 1]
    maps = np.ones((2, 2, 2), np.float32)
    a = instance_attention(maps, boxes, groups[0], 8, 8)
    expected = np.zeros((8, 8), np.float32)
    expected[0:4, 0:4] += 1
    expected[2:6, 2:6] += 1
    np.testing.assert_allclose(a, expected / 2)                    # overlap 1, the rest of both boxes 0.5
    np.testing.assert_allclose(background_map(a[None]), 1 - expected / 2)
    # a stricter NMS does not suppress the second box: two candidates, or one when one is asked for
    apart = instance_groups(boxes, scores, classes, tags, nms_iou=0.5, max_instances=5, min_relative_score=0.0)
    assert [g.members.tolist() for g in apart] == [[0], [1]]
    one = instance_groups(boxes, scores, classes, tags, nms_iou=0.5, max_instances=1, min_relative_score=0.0)
    assert [g.top for g in one] == [0]
    assert instance_groups(boxes, scores, classes, tags, 0.5, 5, min_relative_score=0.7)[1:] == []
    alone = np.zeros((8, 8), np.float32)
    alone[0:4, 0:4] = 1
    np.testing.assert_allclose(instance_attention(maps, boxes, Group(0, 0, np.array([0])), 8, 8), alone)


def test_calibrate_gives_the_confident_region_as_mask():
    image = np.zeros((16, 16, 3), np.uint8)
    image[4:12, 4:12] = 255
    boxes = np.array([[4, 4, 12, 12], [3, 3, 12, 12], [0, 0, 16, 16]], np.float32)
    maps = np.ones((3, 4, 4), np.float32)
    c = calibrate(image, boxes, np.array([0.9, 0.8, 0.1], np.float32), np.array([1, 1, 0]), maps,
                  np.array([False, True]), nms_iou=0.5, max_instances=1, min_relative_score=0.5,
                  crf=CRFConfig(enabled=False))
    assert c.labels.tolist() == [1] and c.weights.tolist() == pytest.approx([0.9])
    assert c.masks[0, 5:11, 5:11].all() and not c.masks[0, 13:, :].any()
    # ring of box 1 only: A = 0.5, heat 0.8 / 1.7, confident 0.24 < background 0.5
    np.testing.assert_allclose(c.boxes[0], [4, 4, 12, 12])


# ---------------------------------------------------------------- Eqs. 3-4

def test_weighted_rcnn_loss_tiny_case():
    logits = torch.zeros(2, 3)                                  # CE = ln 3 for both RoIs
    deltas = torch.zeros(2, 12)
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    cls, reg = weighted_rcnn_loss(logits, deltas, torch.tensor([1, 0]), targets, torch.tensor([0.5, 0.25]))
    assert cls.item() == pytest.approx((0.5 + 0.25) * math.log(3) / 2)
    assert reg.item() == pytest.approx(0.5 * (1 - 0.5 / 9) / 2)   # smooth L1 (beta 1/9) of 1, weight 0.5, 2 RoIs


def test_weighted_rpn_loss_tiny_case():
    obj, reg = weighted_rpn_loss(torch.zeros(3), torch.zeros(3, 4), torch.tensor([1.0, 0.0, 0.0]),
                                 torch.tensor([[0.05, 0, 0, 0]] * 3, dtype=torch.float32),
                                 torch.tensor([0.8, 0.8, 0.2]), torch.tensor([0]), torch.tensor([1, 2]))
    assert obj.item() == pytest.approx((0.8 + 0.8 + 0.2) * math.log(2) / 3)
    assert reg.item() == pytest.approx(0.8 * 0.5 * 0.05 ** 2 * 9 / 3)


def test_unit_weights_give_torchvision_losses():
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    torch.manual_seed(0)
    logits, deltas = torch.randn(6, 4), torch.randn(6, 16)
    labels, targets = torch.tensor([0, 1, 3, 0, 2, 2]), torch.randn(6, 4)
    ours = weighted_rcnn_loss(logits, deltas, labels, targets, torch.ones(6))
    theirs = fastrcnn_loss(logits, deltas, [labels], [targets])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    obj, d = torch.randn(5), torch.randn(5, 4)
    lab, t = torch.tensor([1.0, 0.0, 1.0, 0.0, -1.0]), torch.randn(5, 4)
    pos, neg = torch.tensor([0, 2]), torch.tensor([1, 3])
    o, r = weighted_rpn_loss(obj, d, lab, t, torch.ones(5), pos, neg)
    sampled = torch.cat([pos, neg])
    torch.testing.assert_close(o, nn.functional.binary_cross_entropy_with_logits(obj[sampled], lab[sampled]))
    torch.testing.assert_close(r, nn.functional.smooth_l1_loss(d[pos], t[pos], beta=1 / 9, reduction="sum") / 4)


# ---------------------------------------------------------------- beta = 0.5

def test_beta_rule_labels_proposals_by_overlap():
    detected = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0],     # IoU 1 with object 0 (class 2)
                              [0.0, 0.0, 10.0, 5.0],      # IoU exactly 0.5: not > beta -> background
                              [0.0, 0.0, 10.0, 6.0],      # IoU 0.6 -> class 2
                              [21.0, 21.0, 30.0, 30.0],   # IoU 0.81 with object 1 (class 0)
                              [40.0, 40.0, 50.0, 50.0]])  # nothing -> background
    labels = proposal_labels(proposals, detected, torch.tensor([2, 0]), beta=0.5)
    assert labels.tolist() == [3, 0, 3, 1, 0]
    assert proposal_labels(proposals, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 0.5).tolist() == [0] * 5
    assert [phase_of(s) for s in range(4)] == [0, 1, 0, 1]


# ---------------------------------------------------------------- dense CRF

def _two_regions(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, 16:] = 255
    truth = np.zeros((32, 32), np.int64)
    truth[:, 16:] = 1
    p1 = np.where(truth == 1, 0.7, 0.3)
    flip = rng.random(truth.shape) < noise
    p1 = np.where(flip, 1 - p1, p1)
    return image, np.stack([1 - p1, p1]).astype(np.float32), truth


@pytest.mark.skipif(not crf_available(), reason="pydensecrf not installed")
def test_crf_keeps_a_clean_two_region_image_and_cleans_noise():
    image, probs, truth = _two_regions(0.0)
    np.testing.assert_array_equal(dense_crf(image, probs), truth)
    image, probs, truth = _two_regions(0.1)
    assert (probs.argmax(axis=0) != truth).sum() > 50          # the unaries alone are wrong in ~100 pixels
    np.testing.assert_array_equal(dense_crf(image, probs), truth)


def test_crf_without_the_package_is_the_argmax_with_one_warning(monkeypatch):
    import wsis.cues.crf as crf

    monkeypatch.setattr(crf, "crf_available", lambda: False)
    monkeypatch.setattr(crf, "_WARNED", False)
    image, probs, truth = _two_regions(0.1)
    with pytest.warns(UserWarning, match="pydensecrf is not installed"):
        out = crf.dense_crf(image, probs)
    np.testing.assert_array_equal(out, probs.argmax(axis=0))
    with pytest.raises(ValueError, match="do not match"):
        crf.dense_crf(image, probs[:, :8])


# ---------------------------------------------------------------- Eqs. 3-4: which weight a background sample carries

def test_sample_weights_matched_or_nearest_ground_truth():
    from wsis.methods.labelpenet.model import sample_weights

    targets = [{"weights": torch.tensor([0.2, 0.9])}, {"weights": torch.zeros(0)}]
    matched = [torch.tensor([1, -1, 0, -2]), torch.tensor([-1, -1])]
    nearest = [torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0])]
    got = sample_weights(targets, matched, nearest)
    assert got[0].tolist() == pytest.approx([0.9, 0.9, 0.2, 0.2])
    assert got[1].tolist() == [1.0, 1.0]  # no ground truth: unit weights


def _boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_rpn_background_anchor_takes_the_weight_of_the_ground_truth_it_overlaps_most():
    """A = [0,0,10,10] (weight 0.2), B = [20,0,30,10] (0.9); IoU thresholds 0.7 / 0.3. Anchors: A itself
    (fg of A), B shifted by 1 (IoU 90/110 = 0.82, fg of B), by 4 (IoU 60/140 = 0.43, ignored), by 7 (IoU
    30/170 = 0.18, background next to B), and one far from both (IoU 0: argmax picks A). Before, every
    anchor that was not foreground took A's weight (torchvision's match -1/-2 clamped to 0)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.rpn import RPNHead

    from wsis.methods.labelpenet.model import WeightedRPN

    rpn = WeightedRPN(AnchorGenerator(((8,),), ((1.0,),)), RPNHead(4, 1), 0.7, 0.3, 256, 0.5,
                      dict(training=10, testing=10), dict(training=10, testing=10), 0.7)
    anchors = _boxes([0, 0, 10, 10], [21, 0, 31, 10], [24, 0, 34, 10], [27, 0, 37, 10], [100, 100, 110, 110])
    targets = [{"boxes": _boxes([0, 0, 10, 10], [20, 0, 30, 10]), "weights": torch.tensor([0.2, 0.9])}]
    labels, _ = rpn.assign_targets_to_anchors([anchors], targets)
    assert labels[0].tolist() == [1.0, 1.0, -1.0, 0.0, 0.0]
    assert rpn._weights.tolist() == pytest.approx([0.2, 0.9, 0.9, 0.9, 0.2])


def test_roi_heads_background_roi_takes_the_weight_of_the_ground_truth_it_overlaps_most():
    """Eq. 4's weights of the sampled RoIs: a foreground RoI carries its ground truth's weight, a
    background RoI (IoU < 0.5 with both) the weight of the one it overlaps most -- B's 0.9 for a box
    next to B, where torchvision's clamped match would give A's 0.2."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    from wsis.methods.labelpenet import model as lp

    seen = {}

    def spy(class_logits, box_regression, labels, regression_targets, weights):
        seen["labels"], seen["weights"] = labels.clone(), weights.clone()
        return class_logits.sum() * 0, box_regression.sum() * 0

    heads = lp.WeightedRoIHeads(MultiScaleRoIAlign(["0"], 2, 2), TwoMLPHead(4 * 2 * 2, 8), FastRCNNPredictor(8, 3),
                                0.5, 0.5, 512, 1.0, None, 0.05, 0.5, 10)
    heads.train()
    gt = {"boxes": _boxes([0, 0, 10, 10], [20, 0, 30, 10]), "labels": torch.tensor([1, 2]),
          "weights": torch.tensor([0.2, 0.9])}
    proposals = [_boxes([0, 0, 10, 10], [27, 0, 37, 10])]  # A itself; next to B (IoU 0.18)
    features = {"0": torch.zeros(1, 4, 8, 8)}
    original = lp.weighted_rcnn_loss
    lp.weighted_rcnn_loss = spy
    try:
        heads(features, proposals, [(40, 40)], [gt])
    finally:
        lp.weighted_rcnn_loss = original
    # torchvision appends the ground-truth boxes to the proposals: A, next-to-B, A (gt), B (gt)
    by_label = sorted(zip(seen["labels"].tolist(), [round(w, 6) for w in seen["weights"].tolist()]))
    assert by_label == [(0, 0.9), (1, 0.2), (1, 0.2), (2, 0.9)]


def test_a_module_labels_its_training_images_only_when_a_later_stage_trains():
    from wsis.config import load_config
    from wsis.methods.labelpenet import _supervises
    from wsis.methods.labelpenet.config import LabelPENetConfig

    def cfg(**its):
        return load_config(LabelPENetConfig, "demo_labelpenet.yaml",
                           [f"schedule.{m}.iterations={n}" for m, n in its.items()])

    ladder_prefix = cfg(refinement=0, segmentation=0, forward_backward=0)
    assert _supervises(ladder_prefix, "classification") and not _supervises(ladder_prefix, "detection")
    assert not _supervises(ladder_prefix, "refinement") and not _supervises(ladder_prefix, "segmentation")
    # a later module that trains needs every output before it; so does forward-backward learning
    assert _supervises(cfg(refinement=0, segmentation=5, forward_backward=0), "refinement")
    assert _supervises(cfg(refinement=0, segmentation=0, forward_backward=3), "detection")
    assert not _supervises(cfg(), "segmentation")  # nothing comes after the last module


def test_a_candidate_whose_box_collapsed_on_the_border_keeps_a_mask():
    from wsis.methods.labelpenet.calibration import box_mask, box_of

    # a regressed box clamped to a 10 x 8 image, collapsed onto its right and bottom edges
    m = box_mask(np.array([10.0, 8.0, 10.0, 8.0]), 8, 10)
    assert m.sum() == 1 and m[7, 9] and box_of(m).tolist() == [9, 7, 10, 8]
    # an ordinary box is its pixels: columns 2..4, rows 1..2
    m = box_mask(np.array([2.0, 1.0, 5.0, 3.0]), 8, 10)
    assert m.sum() == 6 and box_of(m).tolist() == [2, 1, 5, 3]
