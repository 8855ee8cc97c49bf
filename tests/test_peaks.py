"""The one peak-selection rule (wsis.cues.peaks), by hand."""
import torch

from wsis.cues.peaks import select_peak_indices, select_peaks


def test_select_peaks_per_allowed_class():
    # [batch, class, y, x]; values: class 0 has 3 peaks (5, 9, 7), class 1 has one (4), class 2 one (8)
    peaks = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 2, 2], [0, 1, 3, 3], [0, 2, 4, 4]])
    values = torch.tensor([5.0, 9.0, 7.0, 4.0, 8.0])
    allowed = torch.tensor([True, True, False])
    out = select_peaks(peaks, values, allowed, threshold=0.0, max_per_class=2)
    # class 0 keeps its two highest (9 at row 1, 7 at row 2), class 1 its only one, class 2 is not allowed
    assert out.tolist() == [[0, 0, 1, 1], [0, 0, 2, 2], [0, 1, 3, 3]]
    out = select_peaks(peaks, values, allowed, threshold=4.5, max_per_class=8)
    assert out.tolist() == [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 2, 2]]  # 4 <= 4.5 dropped
    # no threshold and no cap: every peak of an allowed class
    assert select_peaks(peaks, values, allowed).tolist() == peaks[:4].tolist()


def test_keep_strongest_peak_of_a_tagged_class_below_threshold():
    # class 0: values 5, 1, 3 (threshold 2 keeps 5 and 3, max 1 per class -> 5);
    # class 1: values -1, -0.5 (none above 2: keep the strongest, -0.5); class 2 not tagged.
    classes = torch.tensor([0, 0, 0, 1, 1, 2])
    values = torch.tensor([5.0, 1.0, 3.0, -1.0, -0.5, 9.0])
    tagged = torch.tensor([True, True, False])
    assert select_peak_indices(classes, values, tagged, 2.0, 1, keep_strongest=True).tolist() == [0, 4]
    assert select_peak_indices(classes, values, torch.tensor([True, False, False]), 2.0, 8,
                               keep_strongest=True).tolist() == [0, 2]
    # without keep_strongest class 1 has nothing above the threshold
    assert select_peak_indices(classes, values, tagged, 2.0, 1).tolist() == [0]


def test_relative_threshold_drops_peaks_weak_against_their_class_strongest():
    # class 0: 10, 0.5, 3 (relative 0.2: >= 2 keeps 10 and 3); class 1: 0.4, 0.1 (against its own
    # strongest: 0.1 >= 0.2 * 0.4 keeps both; at 0.3, 0.1 < 0.12 drops it); class 2 not allowed
    classes = torch.tensor([0, 0, 0, 1, 1, 2])
    values = torch.tensor([10.0, 0.5, 3.0, 0.4, 0.1, 9.0])
    allowed = torch.tensor([True, True, False])
    assert select_peak_indices(classes, values, allowed, 0.0, None, relative=0.2).tolist() == [0, 2, 3, 4]
    assert select_peak_indices(classes, values, allowed, 0.0, None, relative=0.3).tolist() == [0, 2, 3]
    # then the cap: the strongest of what is left
    assert select_peak_indices(classes, values, allowed, 0.0, 1, relative=0.2).tolist() == [0, 3]
    assert select_peak_indices(classes, values, allowed, 0.0, None, relative=0.0).tolist() == [0, 1, 2, 3, 4]
