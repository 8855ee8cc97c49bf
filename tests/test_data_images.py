
import numpy as np
import pytest
from PIL import Image

from wsis.data.images import atomic_write, image_size, load_image, safe_join
from wsis.errors import InputError


def test_rgb_png_is_returned_exactly(tmp_path):
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[10, 20, 30], [40, 50, 60], [70, 80, 90]]], np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert np.array_equal(out, pixels)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(np.array([[0, 128], [200, 255]], np.uint8), mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (2, 2, 3)
    assert out[1, 0].tolist() == [200, 200, 200] and out[0, 1].tolist() == [128, 128, 128]


def test_rgba_drops_alpha(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png").tolist() == [[[10, 20, 30], [40, 50, 60]]]


def test_palette_indices_become_palette_colours(tmp_path):
    image = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (3 * 253))
    image.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    assert out[0, 1].tolist() == [255, 0, 0] and out[1, 0].tolist() == [0, 0, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_16bit_grayscale_is_rescaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "d.png")
    assert load_image(tmp_path / "d.png")[0, :, 0].tolist() == [0, 255]


def test_exif_orientation_is_ignored(tmp_path):
    # Orientation 6 means "rotate 90 degrees to display"; COCO sizes refer to the stored 2x4 grid.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (4, 2), (200, 100, 50)).save(tmp_path / "e.jpg", exif=exif)
    assert load_image(tmp_path / "e.jpg").shape == (2, 4, 3)
    assert image_size(tmp_path / "e.jpg") == (2, 4)


def test_image_size_is_height_width(tmp_path):
    Image.new("RGB", (7, 3)).save(tmp_path / "s.png")
    assert image_size(tmp_path / "s.png") == (3, 7)


def test_missing_image_names_the_file(tmp_path):
    for read in (load_image, image_size):
        with pytest.raises(InputError, match="nothere.jpg"):
            read(tmp_path / "nothere.jpg")


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"this is not a jpeg at all")
    for read in (load_image, image_size):
        with pytest.raises(InputError, match="junk.jpg"):
            read(tmp_path / "junk.jpg")


def test_truncated_jpeg_names_the_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert image_size(tmp_path / "cut.jpg") == (64, 64)  # the header survives, the pixels do not
    with pytest.raises(InputError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")


def test_safe_join_accepts_relative_names(tmp_path):
    assert safe_join(tmp_path, "a/b.jpg") == tmp_path / "a" / "b.jpg"
    assert safe_join(tmp_path, "a/../b.jpg") == tmp_path / "b.jpg"


@pytest.mark.parametrize("name", ["../secret.jpg", "a/../../secret.jpg", "/etc/passwd", "..", "\\\\server\\x.jpg"])
def test_safe_join_rejects_escaping_names(tmp_path, name):
    with pytest.raises(InputError) as info:
        safe_join(tmp_path, name, listed_in=tmp_path / "list.csv")
    assert "list.csv" in str(info.value) and repr(name) in str(info.value)


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with atomic_write(target) as handle:
        handle.write("new")
        assert target.read_text() == "old"  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_binary(tmp_path):
    with atomic_write(tmp_path / "b.bin", "wb") as handle:
        handle.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_atomic_write_keeps_old_file_and_removes_temp_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_leaves_no_file_when_first_write_fails(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "new.txt"):
            raise ValueError("bad")
    assert list(tmp_path.iterdir()) == []
