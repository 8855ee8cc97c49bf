"""WISE method: configs, per-epoch pseudo targets, and the whole pipeline on tiny synthetic scenes."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsis import masks as mask_ops
from wsis.config import load_config
from wsis.methods import METHODS
from wsis.methods.maskrcnn import MaskRCNNMethodConfig
from wsis.methods.wise import PseudoTargets, WiseMethodConfig
from wsis.proposals import Proposals
from wsis.methods.wise.pseudo_labels import build_candidates
from wsis.structures import ImageRecord

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "wsis" / "configs"


def test_methods_registered():
    assert METHODS["wise"] == "wsis.methods.wise" and METHODS["maskrcnn"] == "wsis.methods.maskrcnn"


@pytest.mark.parametrize("name, cls", [("wise.yaml", WiseMethodConfig), ("wise_cpu.yaml", WiseMethodConfig),
                                       ("maskrcnn.yaml", MaskRCNNMethodConfig),
                                       ("maskrcnn_cpu.yaml", MaskRCNNMethodConfig)])
def test_configs_load(name, cls):
    cfg = load_config(cls, CONFIGS / name)
    gpu = "cpu" not in name
    assert cfg.model.backbone == ("resnet50_fpn" if gpu else "lite0_fpn")
    if gpu:  # WISE 4.2: batch 1, lr 0.00125, 50K iterations, 800 / 1333 px
        s = cfg.schedule
        assert (s.batch_size, s.lr, s.iterations, cfg.data.min_size, cfg.data.max_size) == (
            1, 0.00125, 50000, 800, 1333)


def test_prm_stage_gets_prms_photo_recipe(tmp_path):
    # the photo recipe (frozen backbone with cached features, class prior) reaches stage 1's config
    from wsis.methods.prm import PRMMethodConfig
    from wsis.methods.wise import prm_stage_config

    cfg = load_config(WiseMethodConfig, None, ["prm.model.frozen_backbone=true", "prm.model.class_prior=imagenet",
                                               "prm.data.feature_cache=/tmp/features"])
    config = tmp_path / "prm.yaml"
    config.write_text(__import__("yaml").safe_dump(prm_stage_config(cfg)))
    prm_cfg = load_config(PRMMethodConfig, config)
    assert (prm_cfg.model.frozen_backbone, prm_cfg.model.class_prior, prm_cfg.data.feature_cache) == \
        (True, "imagenet", "/tmp/features")
    # off by default: the paper's training
    assert load_config(PRMMethodConfig, None).model == load_config(WiseMethodConfig, None).prm.model
    assert not load_config(WiseMethodConfig, CONFIGS / "wise_cpu.yaml").prm.model.frozen_backbone
    # the benchmark config: WISE's detector is the reference's, stage 1 the photo recipe
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    wise_cfg = load_config(WiseMethodConfig, bench / "wise_reference_cpu.yaml")
    ref_cfg = load_config(MaskRCNNMethodConfig, bench / "reference_cpu.yaml")
    assert (wise_cfg.model, wise_cfg.data, wise_cfg.schedule) == (ref_cfg.model, ref_cfg.data, ref_cfg.schedule)
    assert wise_cfg.prm.model.frozen_backbone and wise_cfg.prm.model.class_prior == "imagenet"
    # the retrieval variant differs from it in the pseudo-mask source only
    retr = load_config(WiseMethodConfig, bench / "wise_retrieval_cpu.yaml")
    assert retr.pseudo.candidates == "retrieval" and wise_cfg.pseudo.candidates == "objectness"
    retr.pseudo.candidates = "objectness"
    assert retr == wise_cfg


def test_pseudo_targets_resample_per_epoch_and_argmax_is_fixed():
    # one peak, 4 identical-position candidates of objectness 1..4: draws vary with the epoch
    masks = np.zeros((4, 5, 5), bool)
    for i in range(4):
        masks[i, :, : i + 2] = True  # nested column bands, all contain (2, 0)
    props = Proposals((5, 5), masks=mask_ops.encode_many(masks), objectness=[1, 2, 3, 4])
    cands = {0: build_candidates(0, props, np.array([7]), np.array([[2, 0]]), np.array([1.0]))}
    rec = ImageRecord(0, "x.png", 5, 5, tags=(7,))
    sampled = PseudoTargets(cands, resample=True, seed=0)
    areas = {int(mask_ops.area(sampled(rec, e).rles())[0]) for e in range(40)}
    assert len(areas) > 1
    assert np.array_equal(sampled(rec, 3).mask_array(), sampled(rec, 3).mask_array())
    fixed = PseudoTargets(cands, resample=False, seed=0)
    # argmax = objectness 4 = columns 0-4: 25 pixels, every epoch
    assert {int(mask_ops.area(fixed(rec, e).rles())[0]) for e in range(5)} == {25}
    # pseudo.top_k reaches the targets: top 2 = objectness 3, 4 = columns 0-3 (20 px) or 0-4 (25 px)
    top2 = PseudoTargets(cands, resample=True, seed=0, cfg=load_config(WiseMethodConfig, None, ["pseudo.top_k=2"]).pseudo)
    assert {int(mask_ops.area(top2(rec, e).rles())[0]) for e in range(40)} == {20, 25}


def test_pseudo_options_off_in_the_paper_config():
    pseudo = load_config(WiseMethodConfig, CONFIGS / "wise.yaml").pseudo
    assert (pseudo.candidates, pseudo.top_k, pseudo.peak_relative_threshold, pseudo.nms_threshold) == (
        "objectness", None, None, None)
    assert pseudo.resample


@pytest.mark.slow
def test_wise_end_to_end_on_tiny_scenes(tmp_path):
    from pycocotools.coco import COCO

    from wsis.data.synthetic import make_scenes
    from wsis.methods import get_method, load_trained

    records = make_scenes(tmp_path / "data", num_images=3, image_size=(96, 96), seed=2)
    overrides = ["prm.model.pretrained=false", "prm.data.image_size=64", "prm.schedule.epochs=1", "prm.schedule.batch_size=3",
                 "model.pretrained=false", "data.min_size=96", "data.max_size=96",
                 "model.rpn_pre_nms_top_n_train=200", "model.rpn_post_nms_top_n_train=100",
                 "test.rpn_pre_nms_top_n_test=200", "test.rpn_post_nms_top_n_test=100",
                 "model.box_batch_size_per_image=64", "device=cpu", "schedule.iterations=4",
                 "schedule.batch_size=2", "schedule.lr=0.002", "test.refine=true"]
    predictor = get_method("wise").fit(records, None, overrides, tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "prm" / "method.json").is_file()
    assert sorted(p.name for p in (run / "pseudo").glob("*.json")) == ["0.json", "1.json", "2.json"]
    coco = COCO(str(run / "pseudo_labels.json"))
    assert sorted(coco.getImgIds()) == [0, 1, 2]
    for ann in coco.loadAnns(coco.getAnnIds()):
        # a pseudo instance's class is a tag of its image (peaks of tagged classes only)
        assert ann["category_id"] in records[ann["image_id"]].tags
    meta = json.loads((run / "method.json").read_text())
    assert meta["method"] == "wise" and meta["steps"] == 4  # 3 images, batch 2: 2 steps/epoch, 2 epochs
    out = predictor.predict_records(records, progress=False)
    again = load_trained(run)
    assert again.refine
    for rec in records:
        np.testing.assert_allclose(out[rec.image_id].scores, again.predict(rec).scores, rtol=1e-5)


def test_a_run_with_the_pre_skeleton_photo_recipe_still_loads(tmp_path):
    # method.json of a WISE run written before the skeleton with PRM's fit options (the run of
    # benchmarks/results/wise.md): fit.* moves to prm.model / data / schedule, the never-read
    # calibration keys are dropped, the fine-tuning schedule gives way to the head's
    from wsis.methods.trained import read_trained
    from wsis.methods.wise import migrate_config

    old = {"prm": {"backbone": "tf_efficientnet_lite0", "pretrained": True,
                   "classifier": {"image_size": 448, "epochs": 20, "lr": 0.01, "class_threshold": 0.0},
                   "fit": {"frozen_backbone": True, "class_prior": "imagenet", "thresholds": "fixed",
                           "head_epochs": 100, "head_lr": 0.02, "feature_cache": None, "calibration_folds": 5,
                           "min_positives": 3}},
           "detector": {"fpn_norm": "group", "fpn_channels": 128, "min_size": 320}}
    (tmp_path / "method.json").write_text(json.dumps({"method": "wise", "config": old}))
    _, cfg = read_trained(tmp_path, WiseMethodConfig, migrate_config)
    assert (cfg.prm.model.frozen_backbone, cfg.prm.model.class_prior) == (True, "imagenet")
    assert (cfg.prm.schedule.epochs, cfg.prm.schedule.lr, cfg.prm.data.image_size) == (100, 0.02, 448)
    assert (cfg.model.fpn_norm, cfg.model.fpn_channels, cfg.data.min_size) == ("group", 128, 320)
