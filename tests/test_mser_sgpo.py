"""MSER + SGPO method: EPRM fusion by hand, and a slow end-to-end fit/predict/resume."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from wsis.data.images import load_image
from wsis.methods.mser_sgpo import StageResponse, fuse_representations

torch.set_num_threads(1)


def _response(peaks, prms, num_classes=2, size=4):
    return StageResponse(np.asarray(peaks, np.int64).reshape(-1, 4), np.asarray(prms, np.float32),
                         np.zeros((num_classes, size, size), np.float32), grid_size=10)


def test_fusion_union_keeps_every_stage_peak():
    a = np.eye(4, dtype=np.float32)[None]
    s1 = _response([[0, 1, 2, 2]], a)
    s2 = _response([[0, 0, 5, 5], [0, 1, 2, 3]], np.concatenate([a, a]))
    prms, index, maps = fuse_representations([s1, s2], "union", 0.1)
    assert len(prms) == 3 and maps.shape[0] == 4
    # stage 2's class c is row 2 + c of the stacked class maps
    assert index.tolist() == [1, 2, 3]


def test_fusion_match_adds_nearby_same_class_peaks():
    one = np.zeros((1, 4, 4), np.float32)
    one[0, 0, 0] = 1.0
    two = np.zeros((3, 4, 4), np.float32)
    two[0, 1, 1] = two[1, 2, 2] = two[2, 3, 3] = 1.0
    s1 = _response([[0, 1, 2, 2]], one)
    # radius 0.1 * grid 10 = 1: (2, 3) same class at distance 1 matches; (5, 5) is too far;
    # (2, 2) of class 0 is at distance 0 but another class
    s2 = _response([[0, 1, 2, 3], [0, 1, 5, 5], [0, 0, 2, 2]], two)
    prms, index, _ = fuse_representations([s1, s2], "match", 0.1)
    assert index.tolist() == [1, 3, 2]
    assert prms[0][0, 0] == pytest.approx(0.5) and prms[0][1, 1] == pytest.approx(0.5)  # (1 + 1) / 2
    assert prms[1][2, 2] == 1.0 and prms[2][3, 3] == 1.0


@pytest.mark.slow  # ~1 min on the shared 2-core machine
def test_fit_erases_where_stage1_prms_exceed_delta_and_resumes(tmp_path):
    from wsis.cues.erasing import erase_mask, fill_value, load_mask
    from wsis.cues.peak_backprop import peak_response_maps
    from wsis.data.coco import read_coco, write_coco_gt
    from wsis.data.synthetic import make_scenes
    from wsis.data.torch_data import TagDataset
    from wsis.cues.erasing import EraseTransform
    from wsis.methods import load_trained
    from wsis.methods.mser_sgpo import fit, select_peaks, stage_image

    write_coco_gt(make_scenes(tmp_path / "data", num_images=8, seed=3, image_size=(64, 64)), tmp_path / "gt.json")
    records = read_coco(tmp_path / "gt.json", image_root=tmp_path / "data" / "images")
    overrides = ["model.backbone=tf_efficientnet_lite0", "model.pretrained=false", "schedule.epochs=1", "data.image_size=64",
                 "schedule.batch_size=4", "model.sub_pixel_factor=2", "test.max_peaks_per_class=2", "device=cpu",
                 "proposals.method=superpixel", "test.retrieval.saliency=spectral_residual"]
    work = tmp_path / "run"
    predictor = fit(records, overrides=overrides, workdir=work)
    cfg = predictor.cfg
    category_ids = sorted(records.categories)

    # stage-2 images are erased exactly where a stage-1 PRM of a tagged class reaches delta on 255-scale
    model = predictor.models[0]
    fill = fill_value("mean", model.backbone.mean)
    erased_any = False
    for rec in records.records:
        x = model.backbone.normalize(stage_image(rec, 64, None, fill)[None])
        allowed = torch.tensor([c in rec.tags for c in category_ids])
        _, prms, _ = peak_response_maps(model, x, peaks=select_peaks(model, x, allowed, cfg), batched=False)
        scaled = prms / prms.flatten(1).amax(1).clamp_min(1e-12)[:, None, None] * 255
        expected = (scaled >= 30).any(0) if len(prms) else torch.zeros(64, 64, dtype=torch.bool)
        stored = load_mask(work / "stage1" / "erase" / f"{rec.image_id}.npz")
        assert (torch.from_numpy(stored) == expected).all()
        assert (erase_mask(prms, 30) == expected).all()
        erased_any |= bool(stored.any())
        # what stage 2 trains on: the mean colour (grey 0.5 -> 0 after lite0's normalisation) there
        ds = TagDataset([rec], category_ids, image_size=64, train=False, normalize=model.backbone.normalize,
                        image_transform=EraseTransform([work / "stage1" / "erase" / f"{rec.image_id}.npz"], fill))
        img, _ = ds[0]
        assert (img[:, torch.from_numpy(stored)] == 0).all()
    assert erased_any

    preds = load_trained(work).predict_records(records, progress=False)
    assert set(preds) == {r.image_id for r in records}
    assert any(len(p) for p in preds.values())
    for p in preds.values():
        assert set(np.asarray(p.labels).tolist()) <= set(category_ids)

    # stacked networks (test.peak_backprop=batched) give the loop's stage responses
    x = predictor.base.prepare(load_image(records.records[0].path))
    loop = predictor.stage_responses(x)
    predictor.cfg = dataclasses.replace(cfg, test=dataclasses.replace(cfg.test, peak_backprop="batched"))
    stacked = predictor.stage_responses(x)
    predictor.cfg = cfg
    assert len(stacked) == len(loop) == 2
    for a, b in zip(stacked, loop):
        assert np.array_equal(a.peaks, b.peaks)
        np.testing.assert_allclose(a.prms, b.prms, atol=1e-6)
        np.testing.assert_allclose(a.class_maps, b.class_maps, atol=1e-4)

    first_seconds = json.loads((work / "method.json").read_text())["train_seconds"]
    assert first_seconds > 0  # written by trained.save_trained: the time summed over resumed runs

    # resume: finished stages are not retrained, finished masks not recomputed; a lost mask is redone
    stamps = {p: p.stat().st_mtime_ns for p in [work / "stage1/model.pt", work / "stage2/model.pt"]}
    log_lines = [(work / f"stage{t}/log.jsonl").read_text().count("\n") for t in (1, 2)]
    masks = sorted((work / "stage1/erase").glob("*.npz"))
    lost = masks[0]
    before = load_mask(lost)
    kept = {p: p.stat().st_mtime_ns for p in masks[1:]}
    lost.unlink()
    again = fit(records, overrides=overrides, workdir=work)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert [(work / f"stage{t}/log.jsonl").read_text().count("\n") for t in (1, 2)] == log_lines
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert (load_mask(lost) == before).all()
    assert len(again.models) == 2
    meta = json.loads((work / "method.json").read_text())
    assert meta["method"] == "mser_sgpo" and "train_seconds_this_run" not in meta
    assert meta["train_seconds"] >= first_seconds

    # other erasing settings in the same workdir are refused, not silently mixed
    from wsis.errors import InputError
    with pytest.raises(InputError):
        fit(records, overrides=overrides + ["erasing.delta=50"], workdir=work)


def test_erase_masks_are_shared_out_between_processes(tmp_path, monkeypatch):
    """Under torchrun each process erases its share of the images (one writer per file); the masks of
    the two shares together are those of a single process."""
    import wsis.methods.mser_sgpo as mser
    from wsis.config import load_config
    from wsis.data.synthetic import make_scenes
    from wsis.methods.prm import build_model

    records = make_scenes(tmp_path / "data", num_images=5, seed=3, image_size=(64, 64))
    recs, category_ids = list(records.records), sorted(records.categories)
    cfg = load_config(mser.MSERSGPOConfig, overrides=["model.pretrained=false", "data.image_size=64", "device=cpu",
                                                      "model.sub_pixel_factor=2", "test.max_peaks_per_class=2"])
    torch.manual_seed(0)
    model = build_model(cfg.model, len(category_ids))
    single = mser.erase_stage(model, recs, category_ids, cfg, tmp_path / "single", [None] * len(recs))

    def as_rank(rank):
        monkeypatch.setattr(mser.dist_utils, "get_rank", lambda: rank)
        monkeypatch.setattr(mser.dist_utils, "get_world_size", lambda: 2)
        monkeypatch.setattr(mser.dist_utils, "is_main", lambda: rank == 0)
        monkeypatch.setattr(mser.dist_utils, "barrier", lambda: None)

    as_rank(0)
    shared = mser.erase_stage(model, recs, category_ids, cfg, tmp_path / "shared", [None] * len(recs))
    assert [p.is_file() for p in shared] == [True, False, True, False, True]
    as_rank(1)
    mser.erase_stage(model, recs, category_ids, cfg, tmp_path / "shared", [None] * len(recs))
    assert all(p.is_file() for p in shared)
    for a, b in zip(single, shared):
        np.testing.assert_array_equal(mser.load_mask(a), mser.load_mask(b))
