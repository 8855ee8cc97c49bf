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
