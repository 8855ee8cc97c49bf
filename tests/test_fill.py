"""Class-map fill (wsis.proposals.fill) on a drawn 40 x 40 image: one square blob of the class map
(rows/cols 10-19, value 1) and three proposals whose qualities are computed by hand below."""
import numpy as np
import pytest

from wsis.errors import InputError
from wsis.proposals.fill import FillConfig, fill_instances, fill_quality, with_fill
from wsis.proposals.retrieval import contour_masks

LIMITS = (0.0, 0.85)


def box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((40, 40), bool)
    m[r0:r1 + 1, c0:c1 + 1] = True
    return m


@pytest.fixture
def scene():
    class_map = box(10, 19, 10, 19).astype(np.float32)[None]  # class 0
    masks = np.stack([box(10, 19, 10, 19),   # the blob itself
                      box(10, 19, 10, 29),   # twice as wide
                      box(12, 17, 12, 17)])  # a part inside it
    return class_map, masks, contour_masks(masks, 5)


def test_quality_by_hand(scene):
    class_map, masks, contours = scene
    q = fill_quality(class_map, masks, contours, 1.0, LIMITS)[0]
    # blob: inside mean 1; its 5x5 gradient is the 14x14 dilation minus the 6x6 erosion = 160 px,
    # 100 - 36 = 64 of them on the blob -> 1 - 64/160
    assert q[0] == pytest.approx(1 - 64 / 160)
    # twice as wide: inside 100/200; gradient 14x24 - 6x16 = 240 px, 100 - 6x8 = 52 on the blob
    assert q[1] == pytest.approx(0.5 - 52 / 240)
    # part: inside 1, its whole gradient (10x10 - 2x2 = 96 px) on the blob -> 0
    assert q[2] == pytest.approx(0.0)
    # the map's scale does not matter, its sign does
    assert np.allclose(fill_quality(7 * class_map, masks, contours, 1.0, LIMITS)[0], q)
    assert np.allclose(fill_quality(-class_map, masks, contours, 1.0, LIMITS)[0], 0.0)
    # a proposal over the size limit is never picked
    assert np.isneginf(fill_quality(class_map, masks, contours, 1.0, (0.0, 0.1))[0, 1])


def test_fill_picks_blob_then_part_skipping_the_overlap(scene):
    class_map, masks, contours = scene
    cfg = FillConfig(per_class=2, nms_threshold=0.5)
    out = fill_instances(np.array([0]), class_map, masks, contours, np.zeros(0, int), np.zeros(0, int), cfg, LIMITS)
    # the wide proposal overlaps the blob by IoU 100/200 = 0.5 >= 0.5: suppressed; the part (36/100) is not
    assert out.proposal_index.tolist() == [0, 2]
    assert out.classes.tolist() == [0, 0]
    assert out.scores == pytest.approx([-2 + 0.6, -2.0])


def test_fill_respects_instances_retrieval_kept(scene):
    class_map, masks, contours = scene
    cfg = FillConfig(per_class=3, nms_threshold=0.5)
    # retrieval already kept the blob for class 0: the fill adds only the part
    out = fill_instances(np.array([0]), class_map, masks, contours, np.array([0]), np.array([0]), cfg, LIMITS)
    assert out.proposal_index.tolist() == [2]
    # the same proposal kept for another class does not suppress it for class 0
    out = fill_instances(np.array([0]), class_map, masks, contours, np.array([0]), np.array([5]), cfg, LIMITS)
    assert out.proposal_index.tolist() == [0, 2]


def test_with_fill_appends_below_the_peaks_and_is_a_no_op_when_off(scene):
    class_map, masks, contours = scene
    kept = (np.array([1]), np.array([0]), np.array([0.3]))
    same = with_fill(*kept, np.array([0]), class_map, masks, contours, FillConfig(), LIMITS)
    assert [a.tolist() for a in same] == [[1], [0], [0.3]]
    index, classes, scores = with_fill(*kept, np.array([0]), class_map, masks, contours,
                                       FillConfig(per_class=1), LIMITS)
    assert index.tolist() == [1, 2]  # the blob overlaps the kept wide proposal by 0.5: skipped
    assert classes.tolist() == [0, 0]
    assert scores[1] < -1 < scores[0]


@pytest.mark.parametrize("field, value", [("per_class", -1), ("nms_threshold", 0.0), ("candidates", 0)])
def test_config_errors(field, value):
    with pytest.raises(InputError, match=f"test.fill.{field}"):
        FillConfig(**{field: value}).check()
