"""Class-map fill (wsis.proposals.fill) on a drawn 40 x 40 image: one square blob of the class map
(rows/cols 10-19, value 1) and three proposals whose qualities are computed by hand below."""
import numpy as np
import pytest

from wsis.errors import InputError
from wsis.proposals.fill import FillConfig, fill_instances, fill_quality, sampling_step, with_fill

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
    return class_map, masks


def test_quality_by_hand(scene):
    class_map, masks = scene
    q = fill_quality(class_map, masks, 1.0, LIMITS)[0]
    # blob: inside mean 1; its 3x3 gradient is the 12x12 dilation minus the 8x8 erosion = 80 px,
    # 100 - 64 = 36 of them on the blob -> 1 - 36/80
    assert q[0] == pytest.approx(1 - 36 / 80)
    # twice as wide: inside 100/200; gradient 12x22 - 8x18 = 120 px, 100 - 8x9 = 28 on the blob
    assert q[1] == pytest.approx(0.5 - 28 / 120)
    # part: inside 1, its whole gradient (8x8 - 4x4 = 48 px) on the blob -> 0
    assert q[2] == pytest.approx(0.0)
    # the map's scale does not matter, its sign does
    assert np.allclose(fill_quality(7 * class_map, masks, 1.0, LIMITS)[0], q)
    assert np.allclose(fill_quality(-class_map, masks, 1.0, LIMITS)[0], 0.0)
    # a proposal over the size limit is never picked
    assert np.isneginf(fill_quality(class_map, masks, 1.0, (0.0, 0.1))[0, 1])


def test_fill_picks_blob_then_part_skipping_the_overlap(scene):
    class_map, masks = scene
    cfg = FillConfig(per_class=2, nms_threshold=0.5)
    out = fill_instances(np.array([0]), class_map, masks, np.zeros(0, int), np.zeros(0, int), cfg, LIMITS)
    # the wide proposal overlaps the blob by IoU 100/200 = 0.5 >= 0.5: suppressed; the part (36/100) is not
    assert out.proposal_index.tolist() == [0, 2]
    assert out.classes.tolist() == [0, 0]
    assert out.scores == pytest.approx([-2 + 0.55, -2.0])


def test_fill_respects_instances_retrieval_kept(scene):
    class_map, masks = scene
    cfg = FillConfig(per_class=3, nms_threshold=0.5)
    # retrieval already kept the blob for class 0: the fill adds only the part
    out = fill_instances(np.array([0]), class_map, masks, np.array([0]), np.array([0]), cfg, LIMITS)
    assert out.proposal_index.tolist() == [2]
    # the same proposal kept for another class does not suppress it for class 0
    out = fill_instances(np.array([0]), class_map, masks, np.array([0]), np.array([5]), cfg, LIMITS)
    assert out.proposal_index.tolist() == [0, 2]


def test_with_fill_appends_below_the_peaks_and_is_a_no_op_when_off(scene):
    class_map, masks = scene
    kept = (np.array([1]), np.array([0]), np.array([0.3]))
    same = with_fill(*kept, np.array([0]), class_map, masks, FillConfig(), LIMITS)
    assert [a.tolist() for a in same] == [[1], [0], [0.3]]
    index, classes, scores = with_fill(*kept, np.array([0]), class_map, masks,
                                       FillConfig(per_class=1), LIMITS)
    assert index.tolist() == [1, 2]  # the blob overlaps the kept wide proposal by 0.5: skipped
    assert classes.tolist() == [0, 0]
    assert scores[1] < -1 < scores[0]


@pytest.mark.parametrize("field, value", [("per_class", -1), ("nms_threshold", 0.0), ("candidates", 0), ("contour_width", 0)])
def test_config_errors(field, value):
    with pytest.raises(InputError, match=f"test.fill.{field}"):
        FillConfig(**{field: value}).check()


def test_sampled_quality_is_the_quality_on_the_sampled_grid(scene):
    class_map, masks = scene
    big_map = np.kron(class_map, np.ones((1, 4, 4), np.float32))  # the same drawing at 160 x 160
    big = np.kron(masks, np.ones((1, 4, 4), bool))
    sampled = fill_quality(big_map, big, 1.0, LIMITS, step=4)  # every 4th pixel: the 40 x 40 drawing
    assert np.allclose(sampled, fill_quality(class_map, masks, 1.0, LIMITS))
    # fill_instances samples about 112 pixels per side: at 448 px every 4th
    assert sampling_step(448, 448) == 4 and sampling_step(40, 40) == 1
