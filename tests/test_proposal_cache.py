"""The on-disk proposal cache: keyed by image content and settings, atomic, self-healing."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import wsis.proposals.cache as cache_module
from wsis.errors import InputError
from wsis.proposals import Proposals
from wsis.proposals.cache import ProposalCache, settings_key
from wsis.proposals.masks import Strategy


def write_image(path, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (40, 48, 3), dtype=np.uint8)
    image[10:30, 12:36] = [220, 40, 40]
    Image.fromarray(image).save(path)
    return path


@pytest.fixture
def counted(monkeypatch):
    """Replace the generator by a counter that returns a fixed, recognisable proposal."""
    calls = []

    def fake(image, method, **settings):
        calls.append((method, settings))
        return Proposals(image.shape[:2], np.array([[1, 2, 3, 4]]), None, np.array([0.25]))

    monkeypatch.setattr(cache_module, "generate_proposals", fake)
    return calls


def test_same_content_under_another_path_hits(tmp_path, counted):
    a = write_image(tmp_path / "a.png")
    b = tmp_path / "copy" / "b.png"
    b.parent.mkdir()
    shutil.copy(a, b)
    cache = ProposalCache(tmp_path / "cache")
    first = cache.get_or_compute(a, "selective_search", mode="fast")
    second = cache.get_or_compute(b, "selective_search", mode="fast")
    assert len(counted) == 1
    np.testing.assert_array_equal(second.boxes, [[1, 2, 3, 4]])
    np.testing.assert_array_equal(second.objectness, first.objectness)
    assert second.image_size == (40, 48)


def test_other_content_settings_or_method_miss(tmp_path, counted):
    a = write_image(tmp_path / "a.png")
    c = write_image(tmp_path / "c.png", seed=1)
    cache = ProposalCache(tmp_path / "cache")
    cache.get_or_compute(a, "superpixel", max_side=100)
    cache.get_or_compute(a, "superpixel", max_side=200)
    cache.get_or_compute(a, "selective_search", max_side=100)
    cache.get_or_compute(c, "superpixel", max_side=100)
    cache.get_or_compute(a, "superpixel", max_side=100)
    assert len(counted) == 4


def test_settings_key_is_stable_and_order_free():
    assert settings_key("m", {"a": 1, "b": [2, 3]}) == settings_key("m", {"b": [2, 3], "a": 1})
    assert settings_key("m", {"a": 1}) != settings_key("m", {"a": 2})
    assert settings_key("m", {"s": [Strategy("lab", 100)]}) != settings_key("m", {"s": [Strategy("lab", 200)]})


def test_corrupt_entry_is_recomputed(tmp_path, counted):
    a = write_image(tmp_path / "a.png")
    cache = ProposalCache(tmp_path / "cache")
    cache.get_or_compute(a, "superpixel")
    entry = cache.entry(a, "superpixel")
    entry.write_bytes(entry.read_bytes()[:40])  # a run killed mid-copy, or disk damage
    p = cache.get_or_compute(a, "superpixel")
    assert len(counted) == 2 and len(p) == 1
    assert cache.load(entry) is not None  # and the entry is healthy again


def test_missing_image_is_an_input_error(tmp_path, counted):
    with pytest.raises(InputError, match="nope.png"):
        ProposalCache(tmp_path).get_or_compute(tmp_path / "nope.png", "superpixel")


def test_generate_all_skips_cached_images(tmp_path, counted):
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    cache = ProposalCache(tmp_path / "cache")
    cache.get_or_compute(paths[1], "superpixel")  # a previous run got this far
    entries = cache.generate_all(paths, "superpixel", workers=1, progress=False)
    assert len(counted) == 3  # 1 before + the 2 missing
    assert all(e.is_file() for e in entries.values())
    cache.generate_all(paths, "superpixel", workers=1, progress=False)
    assert len(counted) == 3
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_generate_all_in_worker_processes(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    cache = ProposalCache(tmp_path / "cache")
    entries = cache.generate_all(paths, "superpixel", workers=2, progress=False, max_side=48)
    for path in paths:
        p = cache.load(entries[path])
        assert p is not None and p.has_masks and p.image_size == (40, 48)
        # The red block is one of the proposals.
        assert (p.boxes == [12, 10, 36, 30]).all(axis=1).any()
