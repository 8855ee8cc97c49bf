"""Overlays and the HTML index: hand-drawn instances on tiny generated images."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsis.errors import InputError
from wsis.structures import ImageRecord, Instances
from wsis.viz import draw_instances, instance_colours, write_overlays

GREY = 100


def _square_instances(size: int = 100, scores=(1.0,), masks: bool = True) -> Instances:
    """One 20x20 square instance at rows/cols 40..59 (box 40, 40, 60, 60), label 1."""
    m = np.zeros((len(scores), size, size), bool)
    m[:, 40:60, 40:60] = True
    return Instances((size, size), [[40, 40, 60, 60]] * len(scores), [1] * len(scores), list(scores), m if masks else None)


def _grey(size: int = 100) -> np.ndarray:
    return np.full((size, size, 3), GREY, np.uint8)


def test_first_colours_are_hand_computed_and_stable() -> None:
    # Hue 0, saturation 220/255, value 255 -> red with min channel 255 * (1 - 220/255) = 35.
    assert instance_colours(1)[0].tolist() == [255, 35, 35]
    colours = instance_colours(6)
    np.testing.assert_array_equal(colours, instance_colours(6))
    assert len({tuple(c) for c in colours.tolist()}) == 6


def test_mask_pixels_are_blended_and_far_pixels_untouched() -> None:
    out = draw_instances(_grey(), _square_instances(), {1: "thing"}, alpha=0.5)
    # Inside the mask, away from the contour: 0.5 * 100 + 0.5 * (255, 35, 35) = (177.5, 67.5, 67.5).
    assert out[52, 50].tolist() == [178, 68, 68]
    # The label sits above the box (rows < 40); nothing is drawn far above or below.
    np.testing.assert_array_equal(out[:20], _grey()[:20])
    np.testing.assert_array_equal(out[65:], _grey()[65:])
    np.testing.assert_array_equal(out[:, 90:], _grey()[:, 90:])


def test_label_is_drawn_above_the_box() -> None:
    out = draw_instances(_grey(), _square_instances(scores=(0.87,)), {1: "thing"})
    assert (out[25:40, 40:60] != GREY).any()


def test_instance_without_mask_gets_box_only() -> None:
    out = draw_instances(_grey(), _square_instances(masks=False), {1: "thing"})
    assert out[50, 50].tolist() == [GREY] * 3  # no fill inside the box
    assert out[59, 50].tolist() == [255, 35, 35]  # bottom edge of the box in the instance colour


def test_higher_score_is_painted_on_top() -> None:
    inst = _square_instances(scores=(0.9, 0.1))
    out = draw_instances(_grey(), inst, {1: "thing"}, alpha=1.0)
    assert out[52, 50].tolist() == instance_colours(2)[0].tolist()


def test_input_image_is_not_modified_and_grey_images_work() -> None:
    image = _grey()
    draw_instances(image, _square_instances(), {1: "thing"})
    assert (image == GREY).all()
    assert draw_instances(image[:, :, 0], _square_instances(), {1: "thing"}).shape == (100, 100, 3)


def test_size_mismatch_is_refused() -> None:
    with pytest.raises(ValueError):
        draw_instances(_grey(80), _square_instances(100), {1: "thing"})


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.links += [v for k, v in attrs if k in ("href", "src")]


def _dataset(tmp_path: Path, names: list[str]) -> list[ImageRecord]:
    """Grey 40x50 (HxW) images, each with a 10x10 square instance of class 1 and one of class 2."""
    records = []
    for i, name in enumerate(names):
        path = tmp_path / name
        Image.fromarray(np.full((40, 50, 3), GREY, np.uint8)).save(path)
        m = np.zeros((2, 40, 50), bool)
        m[0, 5:15, 5:15] = True
        m[1, 20:30, 30:40] = True
        gt = Instances((40, 50), np.zeros((0, 4)), [1, 2], None, m)
        records.append(ImageRecord(10 + i, path, 50, 40, tags=(1, 2), gt=gt))
    return records


def test_index_lists_every_image_and_links_exist(tmp_path: Path) -> None:
    records = _dataset(tmp_path, ["a.png", "b.png", "c.png"])
    out = tmp_path / "viz"
    index = write_overlays(records, out, categories={1: "cat", 2: "dog"}, progress=False)
    assert index == out / "index.html"
    page = index.read_text()
    for name in ("a.png", "b.png", "c.png"):
        assert name in page
    assert page.count("2 instances") == 3 and "cat, dog" in page
    parser = _Links()
    parser.feed(page)
    assert sorted(set(parser.links)) == ["10.png", "11.png", "12.png"]
    assert all((out / link).is_file() for link in parser.links)
    assert sorted(p.name for p in out.iterdir()) == ["10.png", "11.png", "12.png", "index.html"]
    # A 40x50 image is enlarged by ceil(384 / 50) = 8 so that labels stay legible.
    assert Image.open(out / "10.png").size == (400, 320)


def test_names_are_html_escaped(tmp_path: Path) -> None:
    records = _dataset(tmp_path, ["x<y>.png"])
    index = write_overlays(records, tmp_path / "viz", categories={1: "<b>bad&name", 2: "dog"}, progress=False)
    page = index.read_text()
    assert "&lt;b&gt;bad&amp;name" in page and "<b>bad" not in page
    assert "x&lt;y&gt;.png" in page and "x<y>" not in page


def test_predictions_threshold_and_missing_images(tmp_path: Path) -> None:
    records = _dataset(tmp_path, ["a.png", "b.png"])
    pred = Instances((40, 50), [[5, 5, 15, 15], [30, 20, 40, 30]], [1, 2], [0.9, 0.2], None)
    index = write_overlays(records, tmp_path / "viz", predictions={10: pred}, categories={1: "cat", 2: "dog"},
                           score_threshold=0.5, progress=False)
    page = index.read_text()
    # Image 10 keeps only the 0.9 "cat"; image 11 has no predictions at all.
    assert "1 instance<" in page and "0 instances" in page and "dog" not in page


def test_side_by_side_puts_two_panels(tmp_path: Path) -> None:
    records = _dataset(tmp_path, ["a.png"])
    out = tmp_path / "viz"
    write_overlays(records, out, predictions={10: records[0].gt}, categories={1: "cat", 2: "dog"},
                   side_by_side=True, progress=False)
    # Two 400-wide panels with an 8 px gap; a 22 px title bar above the 320 px panels.
    assert Image.open(out / "10.png").size == (808, 342)


def test_max_images_limits_output(tmp_path: Path) -> None:
    records = _dataset(tmp_path, ["a.png", "b.png", "c.png"])
    write_overlays(records, tmp_path / "viz", categories={1: "cat"}, max_images=2, progress=False)
    assert sorted(p.name for p in (tmp_path / "viz").glob("*.png")) == ["10.png", "11.png"]


def test_bad_input_raises_input_error(tmp_path: Path) -> None:
    records = _dataset(tmp_path, ["a.png"])
    with pytest.raises(InputError):
        write_overlays(records, tmp_path / "v1", categories={}, side_by_side=True, progress=False)
    missing = [ImageRecord(1, tmp_path / "nope.png", 50, 40)]
    with pytest.raises(InputError, match="nope.png"):
        write_overlays(missing, tmp_path / "v2", categories={}, progress=False)
    wrong_size = [ImageRecord(1, records[0].path, 60, 40)]
    with pytest.raises(InputError, match="a.png"):
        write_overlays(wrong_size, tmp_path / "v3", categories={}, progress=False)
    assert not (tmp_path / "v2" / "index.html").exists()
