"""Label-PEnet end to end on tiny synthetic scenes: cascaded pre-training and forward-backward learning
killed mid-stage and resumed give bit-identical weights with nothing recomputed; predict, reload,
pseudo-label export; (slow) the classification module fits, and the detection module improves on it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsis.engine.trainer import Trainer

torch.set_num_threads(1)

MODULES = ("classification", "detection", "refinement", "segmentation")
TINY = ["model.pretrained=false", "model.hidden=32", "model.aspp_channels=8", "model.anchor_sizes=[16,32,64]",
        "model.rpn_pre_nms_top_n_train=64", "model.rpn_post_nms_top_n_train=32", "model.rpn_pre_nms_top_n_test=64",
        "model.rpn_post_nms_top_n_test=32", "model.box_batch_size_per_image=32", "data.scales=[64,80]",
        "data.max_size=96", "calibration.test_size=64", "test.size=64", "proposals.method=superpixel",
        "proposals.settings={max_side: 64, max_proposals: 40}", "crf.iterations=2", "device=cpu"]


def _schedules(steps: int, fb: int) -> list[str]:
    out = [f"schedule.{m}={{iterations: {steps}, batch_size: 2, lr: 0.01, checkpoint_every: 1, log_every: 1}}"
           for m in MODULES]
    return out + [f"schedule.forward_backward={{iterations: {fb}, batch_size: 2, lr: 0.001, checkpoint_every: 1, log_every: 1}}"]


class _Killed(Exception):
    pass


def _kill_at(monkeypatch, step: int) -> None:
    """The process 'dies' when the ``step``-th training step of the run (over all stages) starts."""
    original = Trainer._train_step
    count = {"n": 0}

    def train_step(self, batch):
        count["n"] += 1
        if count["n"] == step:
            raise _Killed
        return original(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", train_step)


def test_kill_and_resume_both_phases_is_bit_identical(tmp_path, monkeypatch):
    from wsis.data.synthetic import make_scenes
    from wsis.methods import get_method, load_trained
    from wsis.methods.labelpenet import export_pseudo_labels

    records = make_scenes(tmp_path / "data", num_images=3, image_size=(64, 64), seed=3)
    lp = get_method("labelpenet")
    over = TINY + [f"proposals.cache_dir={tmp_path / 'proposals'}"] + _schedules(2, 4)
    whole = lp.fit(records, None, over, tmp_path / "whole")
    # killed in the detection module's second step (4th step of the run) ...
    with monkeypatch.context() as m:
        _kill_at(m, 4)
        with pytest.raises(_Killed):
            lp.fit(records, None, over, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "classification" / "outputs").is_dir()
    # ... then in forward-backward learning's 3rd iteration (a backward phase done, a forward one next)
    with monkeypatch.context() as m:
        _kill_at(m, 1 + 2 + 2 + 2 + 1)  # detection step 2 again, the other stages, fb steps 1-2
        with pytest.raises(_Killed):
            lp.fit(records, None, over, tmp_path / "resumed")
    resumed = lp.fit(records, None, over, tmp_path / "resumed")
    a, b = whole.net.state_dict(), resumed.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "resumed" / "method.json").read_text())
    assert all(meta["modules"][m]["labelled_this_run"] == 0 for m in MODULES[:-1])  # nothing recomputed
    assert meta["forward_backward"] == {"iterations": 4}
    log = [json.loads(x) for x in (tmp_path / "resumed" / "forward_backward" / "log.jsonl").read_text().splitlines()]
    steps = [x for x in log if x.get("event") == "step"]
    assert any("bw_classification_loss_single_label" in x for x in steps)
    assert any("fw_segmentation_loss_mask" in x for x in steps)
    for m in MODULES[:-1]:
        files = sorted(p.name for p in (tmp_path / "resumed" / m / "outputs").glob("*.npz"))
        assert files == sorted(f"{r.image_id}.npz" for r in records)

    again = load_trained(tmp_path / "whole")
    for module in MODULES:
        p = whole.predict(records[0], module=module)
        q = again.predict(records[0], module=module)
        assert p.image_size == (64, 64) and p.has_masks
        np.testing.assert_allclose(p.scores, q.scores, rtol=1e-5)
        assert set(p.labels.tolist()) <= set(records.categories)
    n = export_pseudo_labels(tmp_path / "whole", "detection", records.records, tmp_path / "pseudo.json")
    written = json.loads((tmp_path / "pseudo.json").read_text())
    assert n == len(written) and n >= len(records)  # every tagged class has a candidate
    assert {d["image_id"] for d in written} == {r.image_id for r in records}


@pytest.mark.slow  # ~40 s on the shared 2-core machine
def test_classification_module_fits_its_training_scenes(tmp_path):
    """Trained for real (ImageNet Lite0, 4 scenes, 40 steps through ``fit``): Eq. 2's loss falls
    well below its start and stays finite. Before y was normalised and the demo config clipped the
    gradients (lr 0.001, clip 5) it diverged (loss 4.8 -> 2e6 -> NaN in 40 steps at lr 0.005)."""
    from wsis.data.synthetic import make_scenes
    from wsis.methods import get_method

    records = make_scenes(tmp_path / "data", num_images=4, image_size=(96, 96), seed=5)
    steps = {"classification": 40, "detection": 0, "refinement": 0, "segmentation": 0}
    over = [f"proposals.cache_dir={tmp_path / 'proposals'}", "device=cpu", "data.scales=[144]", "data.max_size=160",
            "calibration.test_size=96", "test.size=96", "model.hidden=256", "model.rpn_post_nms_top_n_test=16",
            "proposals.settings={max_side: 96, max_proposals: 100}", "schedule.forward_backward.iterations=0",
            "crf.iterations=1"]
    over += [f"schedule.{m}={{iterations: {n}, batch_size: 2, lr: 0.001, warmup_iterations: 4, grad_clip: 5.0, "
             "log_every: 0}" for m, n in steps.items()]
    get_method("labelpenet").fit(records, "demo_labelpenet.yaml", over, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "classification" / "log.jsonl").read_text().splitlines()]
    losses = [e["loss_multilabel"] for e in log if e["event"] == "epoch"]
    assert len(losses) == 20 and all(np.isfinite(losses)), losses
    # with y normalised the loss is at least the entropy of y, the mean log label count (a random
    # start is log 5 ~ 1.6); the fitted loss must have closed more than half the gap to that floor
    floor = float(np.mean([np.log(len(set(r.tags))) for r in records]))
    assert np.mean(losses[-4:]) - floor < 0.5 * (np.mean(losses[:2]) - floor), (floor, losses)


@pytest.mark.slow  # ~4 min on the shared 2-core machine (465 s at load 4 with the training-scene scoring too)
def test_cascade_detection_module_improves_box_ap_on_classification(tmp_path):
    """The issue's ladder check, trained for real through ``fit``: 16 synthetic scenes (tags only),
    the classification module 100 iterations, its calibrated boxes B^1 the detection module's
    supervision for 400; box AP@0.5 of both modules' predictions on 16 other scenes. Measured when
    the test was written: classification 9.6, detection 15.9 (with 150 detection iterations the
    detection module was still below its teacher, 6.6; benchmarks/results/labelpenet_synthetic.md)."""
    from wsis.data.synthetic import make_scenes
    from wsis.eval.detection import detection_ap
    from wsis.methods import get_method

    train = make_scenes(tmp_path / "train", num_images=16, seed=0, image_size=(128, 128))
    val = make_scenes(tmp_path / "val", num_images=16, seed=1, image_size=(128, 128))
    steps = {"classification": (100, 0.001, "grad_clip: 5.0, "), "detection": (400, 0.005, ""),
             "refinement": (0, 0.005, ""), "segmentation": (0, 0.005, "")}
    over = [f"proposals.cache_dir={tmp_path / 'proposals'}", "device=cpu", "model.backbone_head=false",
            "schedule.forward_backward.iterations=0"]
    over += [f"schedule.{m}={{iterations: {n}, batch_size: 2, lr: {lr}, lr_steps: [{int(0.8 * n)}], "
             f"warmup_iterations: 10, {extra}checkpoint_every: 1000, log_every: 0}}"
             for m, (n, lr, extra) in steps.items()]
    predictor = get_method("labelpenet").fit(train, "demo_labelpenet.yaml", over, tmp_path / "run")
    ap = {m: detection_ap(val, {r.image_id: predictor.predict(r, module=m) for r in val}, 0.5)["mAP"]
          for m in ("classification", "detection")}
    assert ap["classification"] > 0.02, ap  # the teacher learned something to improve on
    assert ap["detection"] > ap["classification"], ap
