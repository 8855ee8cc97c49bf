"""WISE pseudo labels: peak geometry, candidate sets, Eq. 1 sampling, caching and COCO export
(hand-made maps and masks; expected values computed by hand in the comments)."""
import json

import numpy as np
import torch
from torch import nn

from wsis import masks as mask_ops
from wsis.cues.prm import find_peaks
from wsis.proposals import Proposals
from wsis.proposals.cache import ProposalCache
from wsis.proposals.precomputed import write_npz
from wsis.methods.wise.pseudo_labels import (PeakCandidates, PseudoLabelConfig, PseudoLabeler, build_candidates, choose,
                                most_probable, objectness_probabilities, peak_to_image, pseudo_instances,
                                relative_peak_keep, restrict_top_k, sample_positions, write_pseudo_labels)
from wsis.structures import ImageRecord, RecordSet

torch.set_num_threads(1)


def _box_mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _three_proposals():
    """6x6 image: A = rows/cols 0-2 (objectness 2), B = whole image (1), C = rows/cols 3-5 (3)."""
    masks = np.stack([_box_mask(6, 6, 0, 3, 0, 3), np.ones((6, 6), bool), _box_mask(6, 6, 3, 6, 3, 6)])
    return Proposals((6, 6), masks=mask_ops.encode_many(masks), objectness=[2.0, 1.0, 3.0]), masks


def test_peak_to_image_maps_crm_cells_to_receptive_field_centres():
    # raw 14 cells upsampled x8 to 112 (align_corners); image 448 x 224 -> 32 / 16 px per raw cell.
    # cell 0 -> r 0 -> (0.5 * 32, 0.5 * 16) = (16, 8); cell 111 -> r 13 -> (13.5 * 32, 13.5 * 16) = (432, 216);
    # (56, 8) -> r = (56 * 13/111, 8 * 13/111) = (6.5586, 0.9369) -> (7.0586 * 32, 1.4369 * 16) = (225.9, 22.99).
    cells = np.array([[0, 0], [111, 111], [56, 8]])
    got = peak_to_image(cells, (112, 112), (14, 14), (448, 224))
    np.testing.assert_array_equal(got, [[16, 8], [432, 216], [225, 22]])
    # no upsampling: cell 3 of 14 -> (3.5 * 32) = 112
    np.testing.assert_array_equal(peak_to_image([[3, 3]], (14, 14), (14, 14), (448, 448)), [[112, 112]])


def test_objectness_probabilities_eq1():
    np.testing.assert_allclose(objectness_probabilities([2.0, 0.0, -1.0, 2.0]), [0.5, 0, 0, 0.5])
    np.testing.assert_allclose(objectness_probabilities([0.0, 0.0]), [0.5, 0.5])  # all zero: uniform


def test_only_proposals_containing_the_peak_are_candidates():
    props, masks = _three_proposals()
    points = np.array([[1, 1], [4, 4], [0, 5]])
    cands = build_candidates(3, props, np.array([7, 9, 7]), points, np.array([1.0, 2.0, 3.0]))
    # (1,1) in A, B -> probs 2/3, 1/3; (4,4) in B, C -> 1/4, 3/4; (0,5) only in B -> 1
    np.testing.assert_array_equal(cands.offsets, [0, 2, 4, 5])
    got = [[cands.masks[i] for i in cands.indices[cands.offsets[k]:cands.offsets[k + 1]]] for k in range(3)]
    expect = [[masks[0], masks[1]], [masks[1], masks[2]], [masks[1]]]
    for g, e in zip(got, expect):
        np.testing.assert_array_equal(mask_ops.decode_many(g), np.stack(e))
    np.testing.assert_allclose(cands.probs, [2 / 3, 1 / 3, 1 / 4, 3 / 4, 1.0])
    assert len(cands.masks) == 3  # each candidate proposal stored once


def test_peak_outside_every_proposal_gives_no_instance():
    props, _ = _three_proposals()
    only_ac = props.select([0, 2])
    cands = build_candidates(0, only_ac, np.array([7]), np.array([[0, 5]]), np.array([1.0]))
    np.testing.assert_array_equal(cands.offsets, [0, 0])
    assert len(pseudo_instances(cands, "sample")) == 0
    assert len(pseudo_instances(cands, "argmax")) == 0


def test_choose_is_the_inverse_cdf_per_peak():
    # peak 0: probs 0.2, 0.5, 0.3 -> cumulative 0.2, 0.7, 1.0; peak 1 has no candidates; peak 2: one.
    offsets, probs = np.array([0, 3, 3, 4]), np.array([0.2, 0.5, 0.3, 1.0])
    for u, expect in [(0.0, 0), (0.1, 0), (0.2, 1), (0.25, 1), (0.69, 1), (0.71, 2), (0.999, 2)]:
        np.testing.assert_array_equal(choose(offsets, probs, np.array([u, 0.5, 0.999])), [expect, 3])


def test_sampling_frequencies_follow_objectness():
    # objectness 1, 2, 3, 4 -> P = 0.1, 0.2, 0.3, 0.4 (Eq. 1). 4000 draws (one per epoch): the
    # standard error of a frequency is at most sqrt(0.4 * 0.6 / 4000) = 0.0077; 0.035 is 4.5 of them.
    masks = [np.ones((4, 4), bool)] * 4
    props = Proposals((4, 4), masks=mask_ops.encode_many(np.stack(masks)), objectness=[1, 2, 3, 4])
    cands = build_candidates(5, props, np.array([1]), np.array([[2, 2]]), np.array([1.0]))
    draws = np.concatenate([sample_positions(cands, seed=0, epoch=e) for e in range(4000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.035)
    # a function of (seed, epoch, image) only
    np.testing.assert_array_equal(sample_positions(cands, 0, 17), sample_positions(cands, 0, 17))
    assert len({int(sample_positions(cands, 1, e)[0]) for e in range(30)}) > 1


def test_pseudo_instances_class_from_peak_argmax_and_duplicates():
    props, masks = _three_proposals()
    # two class-7 peaks inside A only-or-B; argmax of (1,1) is A (objectness 2 > 1), of (2,2) too
    cands = build_candidates(0, props, np.array([7, 7, 9]), np.array([[1, 1], [2, 2], [4, 4]]),
                             np.array([5.0, 4.0, 3.0]))
    inst = pseudo_instances(cands, "argmax")
    # the two class-7 peaks pick the same proposal A: one instance; class 9 at (4,4) -> C (3 > 1)
    np.testing.assert_array_equal(inst.labels, [7, 9])
    np.testing.assert_array_equal(inst.mask_array(), np.stack([masks[0], masks[2]]))
    np.testing.assert_array_equal(inst.boxes, [[0, 0, 3, 3], [3, 3, 6, 6]])
    np.testing.assert_array_equal(most_probable(cands.offsets, cands.probs), [0, 2, 5])


def test_candidates_json_round_trip():
    props, _ = _three_proposals()
    cands = build_candidates(3, props, np.array([7, 9]), np.array([[1, 1], [4, 4]]), np.array([1.0, 2.0]))
    back = PeakCandidates.from_json(json.loads(json.dumps(cands.to_json())))
    for name in ("classes", "points", "offsets", "indices", "probs"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cands, name))
    np.testing.assert_array_equal(mask_ops.decode_many(back.masks), mask_ops.decode_many(cands.masks))


def test_export_loads_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    props, masks = _three_proposals()
    cands = {1: build_candidates(1, props, np.array([7]), np.array([[4, 4]]), np.array([1.0])),
             2: build_candidates(2, props, np.array([9]), np.array([[1, 1]]), np.array([1.0]))}
    records = RecordSet([ImageRecord(1, tmp_path / "a.png", 6, 6, tags=(7,)),
                         ImageRecord(2, tmp_path / "b.png", 6, 6, tags=(9,))], {7: "cat", 9: "dog"}, "t")
    write_pseudo_labels(records, cands, tmp_path / "pseudo.json", mode="argmax")
    coco = COCO(str(tmp_path / "pseudo.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    assert sorted((a["image_id"], a["category_id"]) for a in anns) == [(1, 7), (2, 9)]
    by_image = {a["image_id"]: a for a in anns}
    # argmax: (4,4) -> C (objectness 3), (1,1) -> A (2): 9 pixels each, bbox xywh (3,3,3,3) / (0,0,3,3)
    np.testing.assert_array_equal(coco.annToMask(by_image[1]).astype(bool), masks[2])
    np.testing.assert_array_equal(coco.annToMask(by_image[2]).astype(bool), masks[0])
    assert by_image[1]["bbox"] == [3, 3, 3, 3] and by_image[1]["area"] == 9
    assert sorted(coco.getCatIds()) == [7, 9]


class _FixedCRM(nn.Module):
    """A 'PRM model' whose class response map is a hand-made (1, 2, 4, 4) tensor (no upsampling)."""

    sub_pixel_factor = 1

    def __init__(self):
        super().__init__()
        crm = torch.zeros(1, 2, 4, 4)
        crm[0, 0, 1, 2] = 5.0  # class channel 0 (category 7): one peak at cell (1, 2)
        crm[0, 1, 3, 0] = 4.0  # channel 1 (category 9): peak at (3, 0), but 9 is not tagged
        self.register_buffer("map", crm)

    def crm(self, x):
        return self.map

    def find_peaks(self, crm):
        return find_peaks(crm, 3, "median")


class _FakePredictor:
    category_ids = [7, 9]

    def __init__(self):
        self.model = _FixedCRM()

    def prepare(self, image):
        return torch.zeros(1, 3, 4, 4)


def test_labeler_peaks_of_tagged_classes_and_cache(tmp_path):
    from PIL import Image

    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    # cell (1, 2) of 4 in an 8x8 image -> pixel ((1.5) * 2, (2.5) * 2) = (3, 5)
    inside = _box_mask(8, 8, 2, 5, 4, 7)      # contains (3, 5), objectness 1
    elsewhere = _box_mask(8, 8, 5, 8, 0, 3)   # contains (6, 1) only
    props = Proposals((8, 8), masks=mask_ops.encode_many(np.stack([inside, elsewhere])), objectness=[1.0, 5.0])
    cache = ProposalCache(tmp_path / "proposals")
    write_npz(cache.entry(path, "superpixel"), props)
    labeler = PseudoLabeler(_FakePredictor(), "superpixel", {}, cache, PseudoLabelConfig(), tmp_path / "pseudo")
    record = ImageRecord(0, path, 8, 8, tags=(7,))
    cands = labeler.candidates(record)
    np.testing.assert_array_equal(cands.classes, [7])
    np.testing.assert_array_equal(cands.points, [[3, 5]])
    np.testing.assert_array_equal(mask_ops.decode_many(cands.masks), inside[None])
    # the second call reads the cached candidate set (even with the proposals gone)
    cache.entry(path, "superpixel").unlink()
    again = labeler.candidates(record)
    np.testing.assert_array_equal(again.points, cands.points)
    assert (tmp_path / "pseudo" / "0.json").is_file()


# ---------------------------------------------------------------- selection options (not in the paper)

def test_restrict_top_k_renormalises_the_best_candidates():
    # peak 0: 0.2, 0.5, 0.3 -> top 2 are 0.5, 0.3 -> 0.625, 0.375; peak 1 none; peak 2 one -> 1
    got = restrict_top_k(np.array([0, 3, 3, 4]), np.array([0.2, 0.5, 0.3, 1.0]), 2)
    np.testing.assert_allclose(got, [0.0, 0.625, 0.375, 1.0])


def test_top_k_draws_only_the_most_probable_candidate():
    props, masks = _three_proposals()
    # (1,1): A 2/3, B 1/3; (4,4): B 1/4, C 3/4. With top_k=1 every draw is A and C.
    cands = build_candidates(0, props, np.array([7, 9]), np.array([[1, 1], [4, 4]]), np.array([1.0, 1.0]))
    cfg = PseudoLabelConfig(top_k=1)
    for epoch in range(50):
        inst = pseudo_instances(cands, "sample", 0, epoch, cfg)
        np.testing.assert_array_equal(inst.mask_array(), np.stack([masks[0], masks[2]]))
    # without it, B (the whole image) is drawn in some of 50 epochs (P(never) = (2/3 * 1/4... ) < 1e-8)
    drawn_b = [bool(pseudo_instances(cands, "sample", 0, e).mask_array().all(axis=(1, 2)).any()) for e in range(50)]
    assert any(drawn_b)


def test_relative_peak_filter_keeps_peaks_near_their_class_maximum():
    # class 7: values 5 and 2 (2 < 0.5 * 5 dropped); class 9: its only peak 3 is its maximum
    np.testing.assert_array_equal(relative_peak_keep(np.array([7, 7, 9]), np.array([5.0, 2.0, 3.0]), 0.5),
                                  [True, False, True])
    props, masks = _three_proposals()
    # peak (1,1) value 5 -> A; peak (0,5) value 2 -> B (only candidate); class 9 (4,4) -> C
    cands = build_candidates(0, props, np.array([7, 7, 9]), np.array([[1, 1], [0, 5], [4, 4]]),
                             np.array([5.0, 2.0, 3.0]))
    inst = pseudo_instances(cands, "argmax", cfg=PseudoLabelConfig(peak_relative_threshold=0.5))
    np.testing.assert_array_equal(inst.labels, [7, 9])
    np.testing.assert_array_equal(inst.mask_array(), np.stack([masks[0], masks[2]]))


def test_class_nms_among_pseudo_instances():
    props, masks = _three_proposals()
    # class 7: A (value 5) and B (value 4); IoU(A, B) = 9 / 36 = 0.25. Class 9: B (value 3).
    cands = build_candidates(0, props, np.array([7, 7, 9]), np.array([[1, 1], [0, 5], [0, 4]]),
                             np.array([5.0, 4.0, 3.0]))
    inst = pseudo_instances(cands, "argmax", cfg=PseudoLabelConfig(nms_threshold=0.2))
    # 0.25 > 0.2: class 7's weaker B goes; class 9's B stays (another class)
    np.testing.assert_array_equal(inst.labels, [7, 9])
    np.testing.assert_array_equal(inst.mask_array(), np.stack([masks[0], masks[1]]))
    np.testing.assert_allclose(inst.scores, [5.0, 3.0])
    kept = pseudo_instances(cands, "argmax", cfg=PseudoLabelConfig(nms_threshold=0.3))
    np.testing.assert_array_equal(kept.labels, [7, 7, 9])
    # the paper's behaviour (no cfg) is unchanged
    np.testing.assert_array_equal(pseudo_instances(cands, "argmax").labels, [7, 7, 9])


class _FakePRMPredictor(_FakePredictor):
    """Peak response maps by hand: channel 0 (category 7) has one peak whose PRM covers rows 2-4,
    cols 4-6 of the 8x8 scoring grid; channel 1 (9) one whose PRM covers rows 5-7, cols 0-2. Only the
    channels whose threshold is below +inf give peaks (PRMPredictor._select_peaks' rule)."""

    def __init__(self):
        super().__init__()
        self._thresholds = None
        from wsis.proposals.retrieval import RetrievalConfig

        self.cfg = type("Cfg", (), {"test": type("Test", (), {"retrieval": RetrievalConfig()})()})()

    def prepare(self, image):
        return torch.zeros(1, 3, 8, 8)

    def peak_responses(self, x):
        prms = np.stack([_box_mask(8, 8, 2, 5, 4, 7), _box_mask(8, 8, 5, 8, 0, 3)]).astype(np.float32)
        allowed = self._thresholds.numpy() < 0  # tagged: -inf, others +inf
        keep = np.flatnonzero(allowed[[0, 1]])
        return np.array([0, 1])[keep], prms[keep], prms.copy()


def test_retrieval_candidates_are_prms_test_stage_on_the_tags(tmp_path):
    from PIL import Image

    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    inside = _box_mask(8, 8, 2, 5, 4, 7)      # covers channel 0's PRM
    elsewhere = _box_mask(8, 8, 5, 8, 0, 3)   # covers channel 1's PRM (class 9, not tagged)
    props = Proposals((8, 8), masks=mask_ops.encode_many(np.stack([elsewhere, inside])), objectness=[5.0, 1.0])
    cache = ProposalCache(tmp_path / "proposals")
    write_npz(cache.entry(path, "superpixel"), props)
    predictor = _FakePRMPredictor()
    labeler = PseudoLabeler(predictor, "superpixel", {}, cache, PseudoLabelConfig(candidates="retrieval"),
                            tmp_path / "pseudo")
    cands = labeler.candidates(ImageRecord(0, path, 8, 8, tags=(7,)))
    # one instance, class 7, the proposal holding its PRM (not the higher-objectness one), probability 1
    np.testing.assert_array_equal(cands.classes, [7])
    np.testing.assert_array_equal(cands.offsets, [0, 1])
    np.testing.assert_allclose(cands.probs, [1.0])
    np.testing.assert_array_equal(mask_ops.decode_many(cands.masks), inside[None])
    assert cands.values[0] > 0
    assert predictor._thresholds is None  # restored
    assert (tmp_path / "pseudo" / "retrieval" / "0.json").is_file()
    inst = pseudo_instances(cands, "sample", 0, 3)
    np.testing.assert_array_equal(inst.mask_array(), inside[None])
