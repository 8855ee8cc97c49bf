"""DASNet (papers/003) against hand-computed answers; one slow test trains on synthetic scenes."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wsis.errors import InputError
from wsis.methods.dasnet.attention import attend, cell_mask
from wsis.methods.dasnet.data import Warp, mask_image_ids, split_supervision
from wsis.methods.dasnet.inference import box_masks, paste
from wsis.methods.dasnet.output import semantic_instances, voc_palette
from wsis.methods.dasnet.segmentation import (IGNORE, TopDownMerge, assemble, instance_losses, label_boxes,
                                              sample_boxes, semantic_loss, semantic_map)
from wsis.structures import ImageRecord, Instances, RecordSet


# ---------------------------------------------------------------- Eq. 1

def test_attention_zeroes_outside_the_boxes_on_each_level_and_passes_gradients_inside() -> None:
    # Two boxes (normalised): the top-left quarter and the bottom-right 1/16.
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.75, 0.75, 1.0, 1.0]])
    f4 = torch.ones(1, 2, 4, 4, requires_grad=True)
    f2 = torch.ones(1, 3, 2, 2, requires_grad=True)
    out4, out2 = attend([f4, f2], [boxes])
    want4 = torch.zeros(4, 4)
    want4[0:2, 0:2] = 1   # box 1: cells x, y in {0, 1} of the 4 x 4 grid
    want4[3, 3] = 1       # box 2: x, y in [3, 4] -> cell 3
    want2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])   # box 1 -> cell (0, 0); box 2 in [1.5, 2] -> (1, 1)
    assert out4.shape == f4.shape and out2.shape == f2.shape
    assert torch.equal(out4[0, 0], want4) and torch.equal(out4[0, 1], want4)
    assert torch.equal(out2[0, 2], want2)
    weight4, weight2 = torch.arange(32.0).view(1, 2, 4, 4), torch.arange(12.0).view(1, 3, 2, 2)
    ((out4 * weight4).sum() + (out2 * weight2).sum()).backward()
    assert torch.equal(f4.grad, weight4 * want4)   # d out / d f = the same 0/1 mask
    assert torch.equal(f2.grad, weight2 * want2)


def test_a_box_smaller_than_a_cell_keeps_the_cell_it_lies_in() -> None:
    # [0.3, 0.4] x 2 = [0.6, 0.8]: no integer inside, but it lies in cell 0.
    assert torch.equal(cell_mask(torch.tensor([[0.3, 0.3, 0.4, 0.4]]), 2, 2), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert cell_mask(torch.zeros(0, 4), 3, 3).sum() == 0


# ---------------------------------------------------------------- top-down merge

def test_top_down_merge_shapes() -> None:
    # SSD-like levels: 10, 5, 3 cells (3 -> 6 by the deconvolution, resized to 5).
    merge = TopDownMerge([4, 8, 16], top_layers=1, top_channels=6)
    assert merge.ups[1][0].in_channels == 16 and merge.ups[1][0].out_channels == 8    # f_3 -> f_2's channels
    assert merge.ups[0][0].in_channels == 16 and merge.ups[0][0].out_channels == 4    # [up, f_2] -> f_1's
    feats = [torch.randn(2, 4, 10, 10), torch.randn(2, 8, 5, 5), torch.randn(2, 16, 3, 3)]
    assert merge(feats).shape == (2, 6, 20, 20)


# ---------------------------------------------------------------- position-sensitive maps

def test_position_sensitive_assembly_k2_reads_each_cell_from_its_own_map() -> None:
    maps = torch.arange(8.0).view(1, 8, 1, 1).expand(1, 8, 4, 4).contiguous()   # map c is constant c
    rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
    out = assemble(maps, rois, k=2, size=4, spatial_scale=1.0)
    inside = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]], dtype=torch.float32)
    assert out.shape == (1, 2, 4, 4)
    assert torch.allclose(out[0, 0], inside) and torch.allclose(out[0, 1], inside + 4)


def test_box_labelling_rule() -> None:
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0],    # IoU 1 with gt 0
                          [0.0, 0.0, 10.0, 6.0],     # 0.6
                          [0.0, 0.0, 10.0, 5.0],     # 0.5: not above the threshold
                          [5.0, 0.0, 15.0, 10.0],    # 1/3
                          [21.0, 0.0, 30.0, 10.0]])  # 0.9 with gt 1
    positive, matched = label_boxes(boxes, gt, 0.5)
    assert positive.tolist() == [True, True, False, False, True]
    assert matched.tolist() == [0, 0, -1, -1, 1]


def test_sampling_gives_p_positives_and_n_negatives_per_box_by_the_rule() -> None:
    gt = np.array([[20, 20, 60, 80], [100, 40, 150, 90]], np.float32)
    boxes, positive, matched = sample_boxes(gt, np.random.default_rng(0), p=2, n=4, image_size=160, fg_iou=0.5)
    assert positive.sum() == 4 and (~positive).sum() == 8
    iou = label_boxes(torch.from_numpy(boxes), torch.from_numpy(gt), 0.5)
    assert iou[0].tolist() == positive.tolist()
    assert (matched[positive] == np.array([0, 0, 1, 1])).all() and (matched[~positive] == -1).all()


def test_instance_losses_on_a_tiny_case() -> None:
    # k = 1, 1 x 1 boxes: box 0 positive (inside 2, outside 0, target inside), box 1 negative (0, 0).
    assembled = torch.tensor([[[[2.0]], [[0.0]]], [[[0.0]], [[0.0]]]])
    losses = instance_losses(assembled, torch.tensor([True, False]), torch.ones(1, 1, 1, dtype=torch.uint8))
    # instance scores: mean of max(inside, outside) = 2 and 0; sigmoid CE against 1 and 0
    assert math.isclose(losses["loss_score"].item(), (math.log1p(math.exp(-2)) + math.log(2)) / 2, rel_tol=1e-6)
    # softmax over (inside, outside) = (2, 0) against "inside"
    assert math.isclose(losses["loss_mask"].item(), math.log1p(math.exp(-2)), rel_tol=1e-6)


def test_semantic_loss_ignores_pixels_outside_the_boxes() -> None:
    logits = torch.tensor([[[[0.0, 5.0]], [[1.0, -5.0]]]])        # (1, 2, 1, 2): (background, foreground)
    target = torch.tensor([[[1, IGNORE]]], dtype=torch.uint8)    # pixel 1 lies outside every box
    assert math.isclose(semantic_loss(logits, target).item(), math.log1p(math.exp(-1)), rel_tol=1e-6)
    assert semantic_loss(logits, torch.full_like(target, IGNORE)).item() == 0.0


def test_semantic_map_takes_the_max_over_classes_inside_their_boxes() -> None:
    fg = np.array([[[0.9, 0.6], [0.2, 0.7]], [[0.8, 0.7], [0.9, 0.3]]])
    inside = np.array([[[True, True], [True, True]], [[True, True], [False, True]]])
    # (1, 0): class 7's 0.9 lies outside its boxes, class 3's 0.2 is below 0.5 -> background
    assert semantic_map(fg, inside, [3, 7]).tolist() == [[3, 7], [0, 3]]


# ---------------------------------------------------------------- data and output

def _records(tmp_path, ids=(30, 10, 20)) -> RecordSet:
    recs = []
    for i in ids:
        mask = np.zeros((1, 8, 8), bool)
        mask[0, 2:5, 1:6] = True
        from wsis import masks as mask_ops
        gt = Instances((8, 8), labels=[1], masks=mask_ops.encode_many(mask))
        recs.append(ImageRecord(i, tmp_path / f"im{i}.png", 8, 8, tags=(1,), gt=gt))
    return RecordSet(recs, {1: "thing"})


def test_masks_for_first_n_by_id_or_a_list_file(tmp_path) -> None:
    records = _records(tmp_path)
    assert mask_image_ids(records, "2") == {10, 20}
    assert mask_image_ids(records, "all") == {10, 20, 30}
    listing = tmp_path / "masks.txt"
    listing.write_text("# chosen\n30\nim10.png\n")
    assert mask_image_ids(records, str(listing)) == {10, 30}
    listing.write_text("30\nnope.png\n")
    with pytest.raises(InputError, match="masks.txt:2"):
        mask_image_ids(records, str(listing))
    with pytest.raises(InputError):
        mask_image_ids(records, "4")


def test_unchosen_images_keep_boxes_but_lose_masks(tmp_path) -> None:
    boxes, masks = split_supervision(_records(tmp_path), "1")
    assert [r.image_id for r in masks] == [10] and masks[0].gt.has_masks
    assert all(not r.gt.has_masks for r in boxes) and len(boxes) == 3
    assert boxes[0].gt.boxes.tolist() == [[1.0, 2.0, 6.0, 5.0]]


def test_warp_maps_boxes_and_mirrors_them() -> None:
    warp = Warp(10.0, 0.0, 2.0, 2.0, 50)
    assert warp.boxes(np.array([[10, 0, 30, 20]])).tolist() == [[0, 0, 10, 10]]
    warp.flip = True
    assert warp.boxes(np.array([[10, 0, 30, 20]])).tolist() == [[40, 0, 50, 10]]


def test_paste_and_boxes_as_masks_fill_the_box_pixels() -> None:
    want = np.zeros((10, 10), bool)
    want[2:6, 3:8] = True
    assert (paste(np.ones((4, 4)), np.array([3.0, 2.0, 8.0, 6.0]), 10, 10, 0.5) == want).all()
    assert (box_masks(np.array([[3.0, 2.0, 8.0, 6.0]]), 10, 10)[0] == want).all()


def test_voc_palette_and_semantic_instances() -> None:
    palette = voc_palette()
    assert palette[3:6] == [128, 0, 0] and palette[6:9] == [0, 128, 0] and palette[45:48] == [192, 128, 128]
    inst = semantic_instances(np.array([[0, 3], [7, 3]]))
    assert inst.labels.tolist() == [3, 7]
    assert inst.mask_array()[0].tolist() == [[False, True], [False, True]]


# ---------------------------------------------------------------- end to end (slow)

@pytest.mark.slow
def test_cli_train_with_three_masks_beats_boxes_as_masks_on_held_out_scenes(tmp_path) -> None:
    """Semantic mIoU of DASNet's semantic maps against the same detections' boxes filled (measured
    when written: 27.8 vs 20.5). The instance head's masks are only checked to exist: on this
    schedule their ABO (26.4) is still under the boxes' (27.8); benchmarks/results/dasnet.md has
    the longer runs."""
    from PIL import Image

    from wsis.cli import main
    from wsis.data import load_dataset
    from wsis.data.coco import read_coco_results
    from wsis.eval.semantic import semantic_miou
    from wsis.methods import load_trained

    torch.set_num_threads(1)
    assert main(["synth", "--out", str(tmp_path / "train"), "--images", "40", "--seed", "1"]) == 0
    assert main(["synth", "--out", str(tmp_path / "val"), "--images", "8", "--seed", "2"]) == 0
    train_json, val_json = tmp_path / "train/annotations.json", tmp_path / "val/annotations.json"
    run = tmp_path / "run"
    short = ["data.size=128", "model.tasks=[semantic,instance]", "device=cpu",
             "schedule.detection.iterations=80", "schedule.detection.lr_steps=[60]", "schedule.detection.log_every=100",
             "schedule.semantic.iterations=30", "schedule.semantic.lr_steps=[25]",
             "schedule.instance.iterations=10", "schedule.instance.lr_steps=[8]"]
    assert main(["train", "dasnet", "--data", str(train_json), "--workdir", str(run), "--masks-for", "3",
                 "--config", "wsis/configs/demo_dasnet.yaml", *short]) == 0
    assert main(["predict", "--workdir", str(run), "--data", str(val_json), "--out", str(tmp_path / "pred.json"),
                 "--semantic", str(tmp_path / "sem")]) == 0
    val = load_dataset(val_json)
    png = Image.open(tmp_path / "sem" / f"{Path(val[0].file_name).stem}.png")
    assert png.mode == "P" and png.size == (val[0].width, val[0].height)
    assert (tmp_path / "sem/classes.json").is_file() and (tmp_path / "sem/semantic.json").is_file()

    assert sum(len(v) for v in read_coco_results(tmp_path / "pred.json", val).values()) > 0
    predictor = load_trained(run)
    predictor.masks = "boxes"
    boxes = predictor.predict_records(val, progress=False)
    ours = semantic_miou(val, read_coco_results(tmp_path / "sem/semantic.json", val))["miou"]
    baseline = semantic_miou(val, boxes)["miou"]
    assert ours > baseline, (ours, baseline)


def test_semantic_png_holds_palette_indices_of_the_model_classes(tmp_path) -> None:
    from PIL import Image

    from wsis.methods.dasnet.output import write_semantic_png

    write_semantic_png(tmp_path / "a.png", np.array([[0, 7], [3, 7]]), [3, 5, 7])
    png = Image.open(tmp_path / "a.png")
    assert png.mode == "P" and np.asarray(png).tolist() == [[0, 3], [1, 3]]
    assert png.getpalette()[3:6] == [128, 0, 0]


def test_configs_saved_before_the_schedule_rename_still_load() -> None:
    from wsis.methods.dasnet import migrate_config

    old = {"seed": 1, "schedule": {"detector": {"iterations": 5}, "semantic": {"iterations": 2}}}
    assert migrate_config(old) == {"seed": 1, "schedule": {"detection": {"iterations": 5}, "semantic": {"iterations": 2}}}


@pytest.mark.parametrize("kind, backbone, sides", [("ssd", "tf_efficientnet_lite0", [40, 20, 10, 5, 3, 2]),
                                                   ("faster_rcnn", "lite0_fpn", [80, 40, 20, 10, 5])])
def test_detector_levels_and_box_losses(kind, backbone, sides) -> None:
    from wsis.methods.dasnet.config import DASNetDetectorConfig
    from wsis.methods.dasnet.detector import Detector

    det = Detector(DASNetDetectorConfig(kind=kind, backbone=backbone), num_classes=3, size=320, pretrained=False)
    images = torch.rand(1, 3, 320, 320)
    features = det.features(images)
    assert [f.shape[-1] for f in features] == sides and [f.shape[1] for f in features] == det.channels
    det.train()
    losses = det(images, [{"boxes": torch.tensor([[10.0, 20.0, 200.0, 150.0]]), "labels": torch.tensor([2])}])
    assert all(torch.isfinite(v) for v in losses.values())
    found = det.detect(images)[0]
    assert set(found) >= {"boxes", "labels", "scores"}
