"""PDSL method: configs, backbone adaptation, training data, and the whole pipeline on tiny synthetic
scenes (fit, exact resume, predict, reload, evaluate; and through the command line)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsis.config import load_config
from wsis.errors import InputError
from wsis.methods import METHODS
from wsis.methods.pdsl.config import PDSLDataConfig, PDSLMethodConfig, PDSLModelConfig

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "wsis" / "configs"

# a network small enough to train a few steps in a second on 64-96 px scenes
TINY = ["model.backbone=tf_efficientnet_lite0", "model.pretrained=false", "model.frozen_stages=0",
        "model.reduce_channels=16", "model.hidden=32", "model.mask_channels=8", "model.mask_convs=2",
        "model.mask_roi_size=7", "model.refine_heads=2", "model.mask_heads=2", "device=cpu",
        "schedule.batch_size=2", "schedule.lr=0.001", "schedule.log_every=1",
        "data.scales=[64,96]", "data.max_size=128", "test.scales=[96]", "test.max_size=128",
        "proposals.settings={max_proposals: 24}", "loss.mask_rois=6", "loss.n_seed=3"]


def test_registered():
    assert METHODS["pdsl"] == "wsis.methods.pdsl"


def test_paper_config_has_the_paper_values():
    cfg = load_config(PDSLMethodConfig, CONFIGS / "pdsl.yaml")
    m, s, a, t = cfg.model, cfg.schedule, cfg.data, cfg.test
    assert (m.refine_heads, m.mask_heads, cfg.loss.n_seed, cfg.loss.tau, cfg.loss.correlation) == (4, 4, 10, 5.0, True)
    assert cfg.loss.correlation_target == "score"   # Eq. 8 as written
    assert (s.lr, s.momentum, s.iterations, s.batch_size, m.dropout) == (0.01, 0.9, 240000, 1, 0.5)
    assert a.scales == list(range(480, 1217, 32)) and (a.crop, a.hsv, a.hflip) == (0.9, 1.5, True)
    assert t.scales == [480, 576, 672, 768, 864, 960, 1056, 1152] and t.flip and t.nms_threshold == 0.5
    assert cfg.proposals.settings["max_proposals"] == 2000 and m.mask_convs == 4 and m.mask_channels == 256
    cpu = load_config(PDSLMethodConfig, CONFIGS / "pdsl_cpu.yaml")
    assert cpu.model.backbone == "tf_efficientnet_lite0" and cpu.proposals.settings["max_proposals"] <= 500
    assert len(cpu.test.scales) < len(t.scales) and cpu.loss.mask_rois is not None
    demo = load_config(PDSLMethodConfig, CONFIGS / "demo_pdsl.yaml")   # `wsis demo --method pdsl`
    assert max(demo.data.scales) <= demo.data.max_size and demo.model == cpu.model
    assert demo.loss == cpu.loss and demo.schedule.lr_steps[-1] < demo.schedule.iterations


def test_backbone_is_dilated_to_stride_16_and_frozen_in_stages():
    from wsis.backbones import backbone_stages
    from wsis.methods.pdsl.model import pdsl_backbone

    bb = pdsl_backbone(PDSLModelConfig(backbone="tf_efficientnet_lite0", pretrained=False, output_stride=16,
                                       frozen_stages=2))
    assert bb.stride == 16
    with torch.no_grad():
        assert bb(torch.zeros(1, 3, 64, 96)).shape[-2:] == (4, 6)
    stages = backbone_stages(bb)
    assert len(stages) == 9
    assert not any(p.requires_grad for s in stages[:2] for p in s.parameters())
    assert all(p.requires_grad for p in stages[2].parameters())
    with pytest.raises(InputError):
        pdsl_backbone(PDSLModelConfig(backbone="tf_efficientnet_lite0", pretrained=False, output_stride=8))


def test_a_pretrained_model_is_rebuilt_without_weights_and_loads_strictly():
    from timm.layers import FrozenBatchNormAct2d

    from wsis.methods.pdsl.model import build_pdsl

    cfg = PDSLModelConfig(backbone="tf_efficientnet_lite0", pretrained=True, reduce_channels=16, hidden=32,
                          mask_channels=8, refine_heads=1, mask_heads=1)
    trained = build_pdsl(cfg, 3)  # packaged ImageNet weights, batch norm frozen
    rebuilt = build_pdsl(cfg, 3, pretrained=False)
    assert any(isinstance(m, FrozenBatchNormAct2d) for m in rebuilt.modules())
    rebuilt.load_state_dict(trained.state_dict(), strict=True)


def test_optimizer_rates_per_part():
    from wsis.methods.pdsl import pdsl_optimizer
    from wsis.methods.pdsl.config import PDSLScheduleConfig
    from wsis.methods.pdsl.model import build_pdsl

    cfg = PDSLModelConfig(backbone="tf_efficientnet_lite0", pretrained=False, frozen_stages=7, reduce_channels=8,
                          hidden=16, mask_channels=8, refine_heads=1, mask_heads=1)
    model = build_pdsl(cfg, 2)
    opt = pdsl_optimizer(model, PDSLScheduleConfig(lr=0.01, backbone_lr_mult=0.1, mask_lr_mult=4.0))
    rest, masks, backbone = opt.param_groups
    assert (rest["lr"], masks["lr"], backbone["lr"]) == pytest.approx((0.01, 0.04, 0.001))
    assert {id(p) for p in masks["params"]} == {id(p) for p in model.masker.parameters()}
    trainable = {id(p) for p in model.backbone.parameters() if p.requires_grad}
    assert trainable and {id(p) for p in backbone["params"]} == trainable
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())


def test_training_samples_are_a_function_of_seed_epoch_and_image(tmp_path):
    from wsis.data.synthetic import make_scenes
    from wsis.methods.pdsl.data import PDSLDataset

    records = make_scenes(tmp_path / "data", num_images=2, image_size=(80, 120), seed=1)
    boxes = np.array([[0, 0, 120, 80], [10, 10, 50, 40], [100, 70, 120, 80]], np.float32)
    ds = PDSLDataset(records.records, sorted(records.categories), lambda r: boxes,
                     PDSLDataConfig(scales=[40, 60], max_size=200), lambda x: x.float(), seed=0)
    a, b = ds[1], ds[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"]) and a["flip"] == b["flip"]
    seen = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        s = ds[1]
        h, w = s["image"].shape[1:]
        seen.add((h, w, s["flip"]))
        assert min(h, w) in (40, 60)
        bx = s["boxes"]
        assert (bx[:, 0] >= -1e-4).all() and (bx[:, 2] <= w + 1e-4).all() and (bx[:, 3] <= h + 1e-4).all()
        assert ((bx[:, 2:] - bx[:, :2]) > 0).all()
        # source boxes are as generated; orig boxes are them clipped to a 0.9 crop
        kept = s["source_boxes"]
        assert all(any(torch.equal(k, torch.from_numpy(x)) for x in boxes) for k in kept)
        o = s["orig_boxes"]
        assert ((o[:, 2] - o[:, 0]) <= 0.9 * 120 + 1).all() or len(o) == len(boxes)
    assert len(seen) > 2


def test_gpu_default_config_loads_without_yaml():
    cfg = load_config(PDSLMethodConfig, None, ["loss.n_seed=1"])
    assert cfg.loss.n_seed == 1 and cfg.model.backbone == "resnet50"


def test_bad_settings_and_untagged_data_are_clean_errors(tmp_path):
    from wsis.data.synthetic import make_scenes
    from wsis.methods.pdsl import fit
    from wsis.structures import ImageRecord, RecordSet

    records = make_scenes(tmp_path / "data", num_images=1, image_size=(64, 64), seed=0)
    with pytest.raises(InputError, match="n_seed"):
        fit(records, None, TINY + ["loss.n_seed=0"], tmp_path / "w")
    with pytest.raises(InputError, match="unknown config key"):
        fit(records, None, TINY + ["loss.nseed=3"], tmp_path / "w")
    with pytest.raises(InputError, match="correlation_target"):
        fit(records, None, TINY + ["loss.correlation_target=max"], tmp_path / "w")
    untagged = RecordSet([ImageRecord(r.image_id, r.path, r.width, r.height) for r in records], records.categories)
    with pytest.raises(InputError, match="no image has tags"):
        fit(untagged, None, TINY, tmp_path / "w")


def test_ground_truth_is_stripped_before_training(tmp_path):
    from wsis.data.synthetic import make_scenes
    from wsis.methods.pdsl import tags_only

    records = make_scenes(tmp_path / "data", num_images=2, image_size=(64, 64), seed=0)
    assert all(r.gt is not None for r in records)
    stripped = tags_only(records)
    assert all(r.gt is None and r.crowd.size == 0 for r in stripped)
    assert [r.tags for r in stripped] == [r.tags for r in records]


def test_fit_resumes_exactly_predicts_reloads_and_evaluates(tmp_path):
    from wsis.data.synthetic import make_scenes
    from wsis.eval import evaluate
    from wsis.methods import get_method, load_trained

    records = make_scenes(tmp_path / "data", num_images=3, image_size=(96, 96), seed=2)
    shared = [f"proposals.cache_dir={tmp_path / 'proposals'}", f"grabcut.cache_dir={tmp_path / 'grabcut'}"]
    pdsl = get_method("pdsl")
    # 3 images, batch 2: 2 steps per epoch; 4 iterations = 2 epochs, in one go ...
    whole = pdsl.fit(records, None, TINY + shared + ["schedule.iterations=4"], tmp_path / "whole")
    # ... or stopped after the first epoch and resumed
    pdsl.fit(records, None, TINY + shared + ["schedule.iterations=2"], tmp_path / "resumed")
    resumed = pdsl.fit(records, None, TINY + shared + ["schedule.iterations=4"], tmp_path / "resumed")
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log if x["event"] == "epoch"] == [2, 4]
    assert {"mil", "refine_cls", "refine_box", "mask_agnostic", "mask_specific", "correlation"} <= set(log[0])
    meta = json.loads((tmp_path / "whole" / "method.json").read_text())
    assert meta["method"] == "pdsl" and meta["signal"] == "image-level tags" and meta["train_seconds"] > 0
    assert meta["config"]["model"]["refine_heads"] == 2 and meta["steps"] == 4
    assert any((tmp_path / "grabcut").rglob("*.npz"))  # seeds cached on disk, shared by both runs

    preds = whole.predict_records(records, progress=False)
    assert set(preds) == {r.image_id for r in records}
    p = preds[records[0].image_id]
    assert len(p) > 0 and p.has_masks and p.image_size == (96, 96)
    assert set(p.labels.tolist()) <= set(records.categories) and (np.diff(p.scores) <= 1e-7).all()
    again = load_trained(tmp_path / "whole").predict(records[0])
    np.testing.assert_allclose(again.scores, p.scores, rtol=1e-5)
    np.testing.assert_allclose(again.boxes, p.boxes, rtol=1e-4, atol=1e-3)
    report = evaluate(records, preds, detection=True)
    assert set(report["voc"]["mAP"]) == {"0.25", "0.5", "0.7", "0.75"} and "corloc" in report["detection"]

    # soft masks (threshold studies) are the probabilities the hard masks are cut from
    from wsis.data.images import load_image
    from wsis.methods.pdsl.inference import detect_and_segment

    image = load_image(records[0].path)
    args = (whole.model, image, whole.proposal_boxes(records[0]), whole.cfg.test, whole.device)
    hard, soft = detect_and_segment(*args), detect_and_segment(*args, soft=True)
    assert soft.masks.dtype == np.float32 and soft.masks.min() >= 0 and soft.masks.max() <= 1
    np.testing.assert_array_equal(soft.masks > whole.cfg.test.mask_threshold, hard.masks)


@pytest.mark.parametrize("ablation", [["model.refine_heads=0"], ["model.mask_heads=0", "loss.correlation=false"],
                                      ["loss.correlation_target=relative"]])
def test_ablations_train_and_predict(tmp_path, ablation):
    from wsis.data.synthetic import make_scenes
    from wsis.methods.pdsl import fit

    records = make_scenes(tmp_path / "data", num_images=2, image_size=(64, 64), seed=4)
    predictor = fit(records, None, TINY + ablation + ["schedule.iterations=1", "test.flip=false"], tmp_path / "run")
    log = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert ("refine_cls" in log) == ("model.refine_heads=0" not in ablation)
    assert ("mask_specific" in log) == ("model.mask_heads=0" not in ablation)
    assert "mask_agnostic" in log
    assert ("correlation" in log) == ("loss.correlation=false" not in ablation and "model.mask_heads=0" not in ablation)
    out = predictor.predict(records[0])
    assert out.has_masks and len(out) > 0


def test_cli_train_predict_evaluate(tmp_path, capsys):
    from wsis.cli import main
    from wsis.data.coco import write_coco_gt
    from wsis.data.synthetic import make_scenes

    records = make_scenes(tmp_path / "data", num_images=3, image_size=(64, 64), seed=5)
    gt = tmp_path / "gt.json"
    write_coco_gt(records, gt)
    common = ["--data", str(gt), "--image-root", str(tmp_path / "data" / "images")]
    run = tmp_path / "run"
    assert main(["train", "pdsl", *common, "--workdir", str(run), *TINY, "schedule.iterations=2"]) == 0
    assert (run / "model.pt").is_file() and (run / "last.pt").is_file()
    pred = tmp_path / "pred.json"
    assert main(["predict", "--workdir", str(run), *common, "--out", str(pred)]) == 0
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--gt", str(gt), "--image-root", str(tmp_path / "data" / "images"),
                 "--pred", str(pred), "--out", str(out), "--detection"]) == 0
    assert "mAP^r@0.5" in capsys.readouterr().out
    assert "corloc" in json.loads(out.read_text())["detection"]
    assert main(["train", "pdsl", *common, "--workdir", str(run), "loss.nseed=2"]) == 2


def test_seed_masks_are_an_explicit_forward_argument_asked_for_the_batch_images(tmp_path):
    from wsis.data.synthetic import make_scenes
    from wsis.methods.pdsl.data import PDSLDataset, collate
    from wsis.methods.pdsl.model import build_pdsl

    cfg = load_config(PDSLMethodConfig, None, TINY)
    records = make_scenes(tmp_path / "data", num_images=2, image_size=(80, 120), seed=1)
    boxes = np.array([[0, 0, 120, 80], [10, 10, 50, 40], [60, 20, 110, 70]], np.float32)
    ds = PDSLDataset(records.records, sorted(records.categories), lambda r: boxes, cfg.data, lambda x: x.float(),
                     seed=0)
    model = build_pdsl(cfg.model, len(records.categories), cfg.loss, cfg.seed)
    assert not hasattr(model, "seed_masks")  # no state set on the model from outside
    batch = collate([ds[0], ds[1]])
    asked = []

    def provider(fill):
        def seed_masks(path, seed_boxes):
            asked.append((path, seed_boxes.copy()))
            return np.full((len(seed_boxes), 80, 120), fill, bool)
        return seed_masks

    torch.manual_seed(0)
    ones = model(batch, provider(True))
    # every tagged image of the batch asks for its own seeds' masks, boxes among its proposals
    assert sorted(p for p, _ in asked) == sorted(str(r.path) for r in records if r.tags)
    assert all(len(b) and all(any(np.array_equal(x, y) for y in boxes) for x in b) for _, b in asked)
    torch.manual_seed(0)
    zeros = model(batch, provider(False))
    assert ones["mil"].item() == zeros["mil"].item()  # the detection branch does not see the masks
    assert ones["mask_agnostic"].item() != zeros["mask_agnostic"].item()  # the mask branch learns from them
