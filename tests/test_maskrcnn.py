"""Mask R-CNN detector: label mapping, targets and flips, schedule, test-time refinement (hand-made
masks), and a tiny random-init model that trains, predicts and round-trips through its workdir."""
import json

import numpy as np
import pytest
import torch

from wsis import masks as mask_ops
from wsis.detectors.maskrcnn import (DetectorConfig, DetectorDataConfig, DetectorTestConfig, InstanceDataset, LabelMap, StageTimer,
                                     build_maskrcnn, detect, ground_truth_instances, targets_from_instances)
from wsis.detectors.refine import refine_with_proposals
from wsis.errors import InputError
from wsis.engine.schedule import lr_factor
from wsis.proposals import Proposals
from wsis.structures import ImageRecord, Instances

torch.set_num_threads(1)

# A tiny, fast detector: random-init Lite0-FPN, 64-96 px inputs, few RPN proposals and RoIs.
TINY = ["model.pretrained=false", "data.min_size=96", "data.max_size=96",
        "model.rpn_pre_nms_top_n_train=200", "model.rpn_post_nms_top_n_train=100",
        "test.rpn_pre_nms_top_n_test=200", "test.rpn_post_nms_top_n_test=100",
        "model.box_batch_size_per_image=64", "device=cpu", "schedule.log_every=1"]


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_label_map_round_trip_and_unknown_category():
    labels = LabelMap([3, 7, 12])
    np.testing.assert_array_equal(labels.to_labels(np.array([12, 3])), [3, 1])  # 0 is background
    np.testing.assert_array_equal(labels.to_category_ids(np.array([2, 3])), [7, 12])
    with pytest.raises(InputError):
        labels.to_labels(np.array([5]))


def test_targets_flip_mirrors_masks_and_boxes():
    # 4x6 image, object on rows 1-2, cols 0-1: box (0, 1, 2, 3); mirrored: cols 4-5, box (4, 1, 6, 3)
    m = _box(4, 6, 1, 3, 0, 2)
    inst = Instances((4, 6), labels=[7], masks=mask_ops.encode_many(m[None]))
    t = targets_from_instances(inst, LabelMap([7]), flip=False)
    np.testing.assert_array_equal(t["boxes"].numpy(), [[0, 1, 2, 3]])
    np.testing.assert_array_equal(t["labels"].numpy(), [1])
    f = targets_from_instances(inst, LabelMap([7]), flip=True)
    np.testing.assert_array_equal(f["boxes"].numpy(), [[4, 1, 6, 3]])
    np.testing.assert_array_equal(f["masks"][0].numpy().astype(bool), _box(4, 6, 1, 3, 4, 6))
    with_empty = Instances((4, 6), labels=[7, 7], masks=mask_ops.encode_many(np.stack([m, np.zeros_like(m)])))
    assert len(targets_from_instances(with_empty, LabelMap([7]), flip=False)["boxes"]) == 1  # empty mask dropped
    empty = targets_from_instances(Instances((4, 6), masks=[]), LabelMap([7]), flip=False)
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 4, 6)


def test_dataset_flip_and_jitter_depend_on_seed_epoch_index(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 10, 3), dtype=np.uint8)).save(path)
    m = _box(8, 10, 0, 8, 0, 3)
    rec = ImageRecord(0, path, 10, 8, tags=(1,), gt=Instances((8, 10), labels=[1], masks=mask_ops.encode_many(m[None])))
    ds = InstanceDataset([rec], ground_truth_instances, LabelMap([1]), DetectorDataConfig(), seed=3)
    seen = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        x1, t1 = ds[0]
        x2, t2 = ds[0]
        assert torch.equal(x1, x2) and torch.equal(t1["boxes"], t2["boxes"])  # reproducible
        seen.append(float(t1["boxes"][0, 0]))
    assert set(seen) == {0.0, 7.0}  # unflipped x0 = 0, flipped x0 = 10 - 3 = 7 (both occur in 8 epochs)


def test_ground_truth_instances_needs_masks(tmp_path):
    rec = ImageRecord(0, tmp_path / "a.png", 4, 4, tags=(1,), gt=Instances((4, 4), boxes=[[0, 0, 2, 2]], labels=[1]))
    with pytest.raises(InputError):
        ground_truth_instances(rec)


def test_lr_factor_warmup_and_steps():
    # warm-up over 4 iterations: (s + 1) / 4; then x0.1 after 10 and again after 20
    assert [lr_factor(s, 4, [10, 20]) for s in (0, 1, 3, 9, 10, 19, 20)] == pytest.approx(
        [0.25, 0.5, 1.0, 1.0, 0.1, 0.1, 0.01])


def test_refinement_picks_highest_iou_proposal():
    # prediction 0: rows/cols 0-3 (16 px). Proposals: P0 rows 0-1 x cols 0-3 (8 px, IoU 8/16 = 0.5),
    # P1 rows 0-3 x cols 0-4 (20 px, IoU 16/20 = 0.8), P2 rows 6-7 (IoU 0). -> P1, box (0, 0, 5, 4).
    # prediction 1: rows 4-5 x cols 6-7 overlaps no proposal -> keeps its own mask.
    h = w = 8
    pred_masks = np.stack([_box(h, w, 0, 4, 0, 4), _box(h, w, 4, 6, 6, 8)])
    pred = Instances((h, w), labels=[3, 5], scores=[0.9, 0.4], masks=mask_ops.encode_many(pred_masks))
    props = np.stack([_box(h, w, 0, 2, 0, 4), _box(h, w, 0, 4, 0, 5), _box(h, w, 6, 8, 0, 8)])
    refined = refine_with_proposals(pred, Proposals((h, w), masks=mask_ops.encode_many(props)))
    np.testing.assert_array_equal(refined.mask_array(), np.stack([props[1], pred_masks[1]]))
    np.testing.assert_array_equal(refined.labels, [3, 5])
    np.testing.assert_allclose(refined.scores, [0.9, 0.4])
    np.testing.assert_array_equal(refined.boxes, [[0, 0, 5, 4], [6, 4, 8, 6]])


def test_resnet50_fpn_without_weights_is_a_clear_input_error(tmp_path):
    with pytest.raises(InputError):
        build_maskrcnn(DetectorConfig(backbone="resnet50_fpn", pretrained=str(tmp_path / "missing.pth")), 2)


def test_unknown_backbone_is_an_input_error():
    with pytest.raises(InputError):
        build_maskrcnn(DetectorConfig(backbone="nope"), 2)  # type: ignore[arg-type]


def _tiny_cfg(**kw) -> DetectorConfig:
    return DetectorConfig(pretrained=False, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                          box_batch_size_per_image=64, **kw)


def _tiny(cfg: DetectorConfig, **test):
    """A 2-class model on 96 px inputs with few RPN proposals at test time (``test``: more test settings)."""
    return build_maskrcnn(cfg, 2, data=DetectorDataConfig(min_size=96, max_size=96),
                          test=DetectorTestConfig(rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100, **test))


def _one_object_batch():
    mask = torch.from_numpy(_box(96, 96, 20, 60, 30, 80).astype(np.uint8))[None]
    target = {"boxes": torch.tensor([[30.0, 20.0, 79.0, 59.0]]), "labels": torch.tensor([1]), "masks": mask}
    return [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(0))], [target]


def test_anchor_sizes_reach_the_rpn_and_need_one_per_level():
    model = _tiny(_tiny_cfg(anchor_sizes=[16, 32, 64, 128, 256]))
    assert model.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))
    with pytest.raises(InputError):
        _tiny(_tiny_cfg(anchor_sizes=[16, 32]))


def test_frozen_body_gets_no_gradient_and_keeps_parameter_names():
    torch.manual_seed(0)
    frozen = _tiny(_tiny_cfg(train_body=False)).train()
    sum(frozen(*_one_object_batch()).values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in frozen.backbone.body.parameters())
    assert all(p.grad is not None for p in frozen.backbone.fpn.parameters())
    # saved models load into either variant
    assert list(frozen.state_dict()) == list(_tiny(_tiny_cfg()).state_dict())


def test_detectron_init_starts_the_mask_loss_at_ln2():
    # mask logits ~ N(0, 0.001 * |features|) are ~0, so the per-pixel BCE is ln 2 whatever the target
    torch.manual_seed(0)
    model = _tiny(_tiny_cfg(predictor_init="detectron")).train()
    losses = model(*_one_object_batch())
    assert abs(float(losses["loss_mask"].detach()) - np.log(2)) < 0.01
    # class scores ~0 too: the classification loss is ln(K + 1) for K = 2 classes
    assert abs(float(losses["loss_classifier"].detach()) - np.log(3)) < 0.05


def test_fpn_and_mask_head_widths_reach_every_layer():
    model = build_maskrcnn(_tiny_cfg(fpn_channels=64, mask_head_channels=32), 3,
                           data=DetectorDataConfig(min_size=96, max_size=96))
    fpn = model.backbone.fpn
    assert model.backbone.out_channels == 64
    assert {m[0].out_channels for m in (*fpn.inner_blocks, *fpn.layer_blocks)} == {64}
    assert model.rpn.head.conv[0][0].in_channels == 64
    assert model.roi_heads.box_head.fc6.in_features == 64 * 7 * 7
    head = model.roi_heads.mask_head
    assert head[0][0].in_channels == 64 and [b[0].out_channels for b in head] == [32] * 4
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4  # 3 classes + background
    losses = model.train()(*_one_object_batch())
    assert set(losses) >= {"loss_mask", "loss_classifier"} and all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(InputError):
        _tiny(_tiny_cfg(backbone="resnet50_fpn", fpn_channels=128))


def test_default_widths_build_torchvisions_model_parameter_for_parameter():
    # the width options must not change the default model (its init order, so old runs reproduce)
    torch.manual_seed(0)
    default = _tiny(_tiny_cfg()).state_dict()
    torch.manual_seed(0)
    explicit = _tiny(_tiny_cfg(fpn_channels=256, mask_head_channels=256, fpn_norm="none")).state_dict()
    assert list(default) == list(explicit)
    assert all(torch.equal(default[k], explicit[k]) for k in default)


def test_group_norm_fpn_outputs_have_unit_rms_whatever_the_input_scale():
    # GroupNorm (affine weight 1, bias 0 at init) standardises each group over channels x pixels, so
    # every FPN level (and P6, a max-pool of normalised P5 -- >= 0 mean, still unit-ish) has rms 1
    # at init even when the body's features are 10x larger, which Lite0's are (rms 3-8).
    torch.manual_seed(0)
    model = _tiny(_tiny_cfg(fpn_norm="group", fpn_channels=64)).eval()
    body = model.backbone.body
    with torch.no_grad():
        feats = [10.0 * f for f in body(torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2)))]
        out = model.backbone.fpn({str(i): f for i, f in enumerate(feats)})
    for name in ("0", "1", "2", "3"):
        assert abs(float(out[name].pow(2).mean().sqrt()) - 1.0) < 1e-3
    with pytest.raises(InputError):
        _tiny(_tiny_cfg(fpn_norm="batch"))  # type: ignore[arg-type]


def test_staged_detect_equals_the_model_forward_and_times_every_stage():
    torch.manual_seed(0)
    model = _tiny(_tiny_cfg(), score_threshold=0.0, detections_per_image=20).eval()
    x = torch.rand(3, 80, 120, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model([x])[0]
    timer = StageTimer()
    got = detect(model, x, timer)
    assert len(expected["boxes"]) == 20
    for key in ("boxes", "labels", "scores", "masks"):
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    assert set(timer.wall) == set(StageTimer.STAGES) - {"encode"} and timer.counts["detections"] == 20
    assert all(v >= 0 for v in timer.cpu.values())


@pytest.mark.slow
def test_tiny_maskrcnn_trains_predicts_and_round_trips(tmp_path):
    from wsis.data.synthetic import make_scenes
    from wsis.methods import get_method, load_trained

    records = make_scenes(tmp_path / "data", num_images=2, image_size=(96, 96), seed=1)
    method = get_method("maskrcnn")
    predictor = method.fit(records, None, TINY + ["schedule.iterations=16", "schedule.batch_size=2",
                                                  "schedule.lr=0.005", "data.hflip=false"], tmp_path / "run")
    lines = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epochs = [l for l in lines if l["event"] == "epoch"]
    assert len(epochs) == 16 and {"loss_mask", "loss_classifier", "loss_objectness"} <= set(epochs[0])
    # the same two images every step: the loss of the last 4 steps is below that of the first 4
    first, last = np.mean([e["loss"] for e in epochs[:4]]), np.mean([e["loss"] for e in epochs[-4:]])
    assert last < first
    out = predictor.predict_records(records, progress=False)
    assert set(out) == {0, 1}
    for rec in records:
        assert out[rec.image_id].image_size == (96, 96)
        assert set(out[rec.image_id].labels.tolist()) <= set(records.categories)
    again = load_trained(tmp_path / "run")
    for rec in records:
        a, b = out[rec.image_id], again.predict(rec)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
        np.testing.assert_array_equal(a.labels, b.labels)
    # a finished workdir is resumed, not retrained: the log does not grow
    method.fit(records, None, TINY + ["schedule.iterations=16", "schedule.batch_size=2", "schedule.lr=0.005",
                                      "data.hflip=false"], tmp_path / "run")
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == len(lines)
