"""A run with per-class thresholds calibrated on its training images predicts with them; an explicit
``test.class_threshold=`` at predict time replaces them (and says so) instead of being ignored."""
import time

import torch

from wsis.config import to_dict


def _run_with_calibrated_thresholds(tmp_path):
    from wsis.methods.prm import PRMMethodConfig, build_model
    from wsis.methods.trained import save_trained

    cfg = PRMMethodConfig(device="cpu")
    cfg.model.pretrained = False
    model = build_model(cfg.model, 2, pretrained=False)
    meta = {"method": "prm", "config": to_dict(cfg), "category_ids": [1, 2], "categories": {"1": "a", "2": "b"},
            "class_thresholds": [0.25, -1.5]}
    work = tmp_path / "run"
    work.mkdir()
    save_trained(work, model, meta, time.perf_counter())
    return work


def test_calibrated_thresholds_are_used(tmp_path):
    from wsis.methods.prm import load

    predictor = load(_run_with_calibrated_thresholds(tmp_path))
    assert torch.equal(predictor.class_thresholds(), torch.tensor([0.25, -1.5]))


def test_an_explicit_class_threshold_replaces_them(tmp_path, capsys):
    from wsis.methods.prm import load

    predictor = load(_run_with_calibrated_thresholds(tmp_path), ["test.class_threshold=0.7"])
    assert torch.allclose(predictor.class_thresholds(), torch.tensor([0.7, 0.7]))
    assert "replaces the 2 per-class thresholds" in capsys.readouterr().out
