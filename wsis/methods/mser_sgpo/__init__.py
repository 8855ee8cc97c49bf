"""MSER + SGPO (Hu et al., "Weakly supervised instance segmentation using multi-stage erasing
refinement and saliency-guided proposals ordering", 2021) as a method.

Training (Algorithm 1, multi-stage erasing refinement), for t = 1..T:
1. train a PRM classifier on the tags of the stage's images I^t (I^1 = the originals) in
   ``workdir/stage{t}`` (the shared :class:`~wsis.engine.Trainer`: an interrupted stage resumes);
2. if t < T: for every training image, the stage's network computes the PRMs of the peaks of the
   image's *tagged* classes on I^t (the labels are known at training time; peaks of absent classes
   would erase arbitrary pixels), thresholds them at delta (Eq. 2) and erases the union (Eq. 3):
   the cumulative mask of I^{t+1} = mask of I^t OR the new regions, stored per image as packed bits
   in ``workdir/stage{t}/erase/<image_id>.npz`` and applied when the next stage loads the image
   (:mod:`wsis.cues.erasing` for delta's scale and the erase colour). Finished stages (``model.pt``)
   and finished masks are not recomputed when a killed run is started again.

Inference (EPRM + SGPO), per image:
1. each of the T networks gives its peaks (class score >= ``test.class_threshold``, at most
   ``test.max_peaks_per_class`` per class) and their PRMs. With batched peak backprop (``test.peak_backprop:
   batched``, or ``auto`` on CUDA) the T networks' weights are stacked and vmapped, so one forward
   pass serves all of them and each backward pass carries a peak of every network
   (:func:`~wsis.cues.peak_backprop.stacked_peak_response_maps`); with ``loop`` (``auto`` on a CPU,
   where it measured faster: ``benchmarks/bench_peak_backprop.py --networks 2``) the networks and their peaks run one
   after the other. Same maps either way;
2. fusion into the enhanced PRM (the paper does not say how; Section 3.3 says that the regions of
   the stages "will be separately assigned a proposal" and that NMS "will combine these highly
   overlapped proposals"): ``test.fusion="union"`` (default) keeps every peak of every stage as an
   instance representation and lets the merging NMS combine the parts; ``"match"`` adds the
   PRM of each later-stage peak to the nearest stage-1 peak of the same class within
   ``match_radius`` (fraction of the map side) and renormalises, unmatched peaks staying separate;
3. scoring of the proposals (cached on disk) per representation: ``test.scoring="sgpo"`` (Eqs. 4-8,
   :mod:`wsis.methods.mser_sgpo.sgpo`) or ``scoring="prm"`` (PRM's retrieval,
   :mod:`wsis.proposals.retrieval`); each
   representation's class-aware term uses the class map of the network that produced it; best
   proposal per representation, then instance NMS with PRM merging.

The photo recipe (issue 11, not in the paper; ``wsis/configs/mser_sgpo_photos_cpu.yaml``): PRM's
``model.frozen_backbone``, ``model.class_prior`` and ``calibration`` switches apply to every stage, each
stage's class layer trained on cached features of its own, erased, images
(:mod:`wsis.methods.mser_sgpo.frozen`), its calibrated per-class thresholds stored in
``stage{t}/thresholds.json`` and used by that stage's network at inference.

Ablation rows of the paper's Table 7 (``erasing.stages``, ``test.scoring``): PRM = ``1, prm``,
PRM+MSER = ``2, prm``, PRM+SGPO = ``1, sgpo``, PRM+MSER+SGPO = ``2, sgpo``.
A predictor trained with T stages also predicts with its first k (:meth:`MSERSGPOPredictor.variant`).

Where each equation is (one hop from here): the PRM classifier of every stage: :mod:`wsis.methods.prm`
and :mod:`wsis.cues.prm`; peaks: :mod:`wsis.cues.peaks`; PRMs: :mod:`wsis.cues.peak_backprop`;
Eqs. 2-3 (thresholded PRMs, the erased image): :mod:`wsis.cues.erasing`; Eqs. 4-8 (SGPO's score):
:mod:`wsis.methods.mser_sgpo.sgpo`; the saliency map of Eq. 8: :mod:`wsis.cues.saliency`.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from wsis import masks as mask_ops
from wsis.config import load_config, to_dict
from wsis.cues.erasing import (EraseTransform, ErasingConfig, apply_erase, erase_mask, fill_value, load_mask,
                               save_mask)
from wsis.cues.peak_backprop import peak_response_maps, stacked_peak_response_maps
from wsis.cues.peaks import crm_peaks, scores_and_peaks
from wsis.cues.prm import PRMNet
from wsis.cues.saliency import get_saliency
from wsis.data.images import atomic_write, load_image
from wsis.data.torch_data import TagDataset, resize_square
from wsis.engine import distributed as dist_utils
from wsis.engine import pick_device
from wsis.errors import InputError
from wsis.methods.base import Predictor, register
from wsis.methods.mser_sgpo.frozen import stage_features
from wsis.methods.mser_sgpo.sgpo import SGPOConfig, sgpo_retrieve
from wsis.methods.prm import PRMPredictor, build_model, migrate_config, train_finetuned
from wsis.methods.prm.config import MOVED_KEYS as PRM_MOVED_KEYS
from wsis.methods.prm.config import (CalibrationConfig, PRMFeatureDataConfig, PRMModelConfig, PRMScheduleConfig,
                                     PRMTestConfig)
from wsis.methods.prm.frozen import apply_prior, check, feature_cache, fit_frozen_features
from wsis.data.torch_data import tag_targets
from wsis.proposals.config import ProposalConfig
from wsis.methods.trained import MODEL_FILE, load_weights, read_trained, save_trained, save_weights, trained_categories
from wsis.proposals.fill import with_fill
from wsis.proposals.retrieval import retrieve
from wsis.structures import ImageRecord, Instances, RecordSet


@dataclass
class MSERErasingConfig(ErasingConfig):
    """Algorithm 1: T stages; each erases the regions of the peaks the inference would keep (the
    ``test`` peak rules) with Eq. 2's delta."""

    stages: int = 2  # T, the paper's default


@dataclass
class MSERTestConfig(PRMTestConfig):
    """PRM's peak rules plus EPRM fusion and the scoring rule (module docstring, steps 2-3)."""

    fusion: Literal["union", "match"] = "union"
    match_radius: float = 0.1
    scoring: Literal["sgpo", "prm"] = "sgpo"
    # one scoring config for both rules: PRM's weights, limits and NMS plus SGPO's saliency term
    retrieval: SGPOConfig = field(default_factory=SGPOConfig)


@dataclass
class MSERSGPOConfig:
    """PRM's network, data, schedule and threshold calibration for every stage (the photo recipe's
    switches included, off by default as in the paper), MSER's erasing and SGPO's scoring."""

    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    model: PRMModelConfig = field(default_factory=PRMModelConfig)
    data: PRMFeatureDataConfig = field(default_factory=PRMFeatureDataConfig)
    schedule: PRMScheduleConfig = field(default_factory=PRMScheduleConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    test: MSERTestConfig = field(default_factory=MSERTestConfig)
    erasing: MSERErasingConfig = field(default_factory=MSERErasingConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


MSERSGPOConfig.MOVED_KEYS = {  # type: ignore[attr-defined]  # the layout before the skeleton (wsis.config)
    **{k: v for k, v in PRM_MOVED_KEYS.items() if not k.startswith("fit.")},
    "stages": "erasing.stages", "fusion": "test.fusion", "match_radius": "test.match_radius",
    "scoring": "test.scoring"}


def migrate_mser_config(config: dict) -> dict:
    """A ``method.json`` config of before the shared scoring config: PRM's keys migrated, and the old
    ``sgpo`` section merged into ``retrieval`` (the section of the run's ``scoring`` winning where
    both set a key)."""
    config = migrate_config(config)
    sgpo = config.pop("sgpo", None)
    if isinstance(sgpo, dict):
        retrieval = dict(config.get("retrieval") or {})
        if config.get("scoring", "sgpo") == "sgpo":
            retrieval.update(sgpo)
        else:
            retrieval = {**sgpo, **retrieval}
        config["retrieval"] = retrieval
    return config


STAGE_FILE = "stage.json"
THRESHOLDS_FILE = "thresholds.json"
ERASE_DIR = "erase"
ERASE_SETTINGS = "settings.json"


# -- peaks ---------------------------------------------------------------------------------------

@torch.no_grad()
def select_peaks(model: PRMNet, x: torch.Tensor, allowed: torch.Tensor | None, cfg: MSERSGPOConfig) -> torch.Tensor:
    """Peaks of one image (1, 3, S, S) whose class is ``allowed`` (C,) bool, or, when None, whose
    class score is >= ``test.class_threshold`` (inference)."""
    return peaks_from_crm(model, model.crm(x), allowed, cfg)


def peaks_from_crm(model: PRMNet, crm: torch.Tensor, allowed: torch.Tensor | None, cfg: MSERSGPOConfig,
                   thresholds: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`select_peaks` from an already computed upsampled CRM (1, C, h, w); ``thresholds`` (C,)
    are the network's calibrated per-class thresholds, used instead of ``test.class_threshold``."""
    class_threshold = cfg.test.class_threshold if thresholds is None else thresholds.to(crm.device)
    return crm_peaks(model, crm, allowed, class_threshold, cfg.test.peak_threshold,  # type: ignore[arg-type]
                     cfg.test.max_peaks_per_class, cfg.test.peak_relative_threshold)


def _batched(cfg: MSERSGPOConfig, device: torch.device) -> bool:
    return cfg.test.peak_backprop == "batched" or (cfg.test.peak_backprop == "auto" and device.type == "cuda")


# -- training ------------------------------------------------------------------------------------

def fit(records: RecordSet, config: str | Path | None = None, overrides: Sequence[str] = (),
        workdir: str | Path = "runs/mser_sgpo") -> "MSERSGPOPredictor":
    """Algorithm 1: T classifiers, each trained on the images erased by the previous ones."""
    cfg = load_config(MSERSGPOConfig, config, list(overrides))
    check_config(cfg, config)
    workdir = Path(workdir)
    category_ids = sorted(records.categories)
    if not any(r.tags for r in records):
        raise InputError(records.name or "dataset", "no image has tags: MSER trains on image-level labels")
    recs = list(records.records)
    masks: list[Path | None] = [None] * len(recs)
    names = [records.categories[c] for c in category_ids]
    models, thresholds, started = [], [], time.perf_counter()
    for t in range(1, cfg.erasing.stages + 1):
        stage_dir = workdir / f"stage{t}"
        model = train_stage(recs, category_ids, cfg, stage_dir, masks, t, names, workdir)
        models.append(model)
        thresholds.append(read_thresholds(stage_dir))
        if t < cfg.erasing.stages:
            masks = erase_stage(model, recs, category_ids, cfg, stage_dir, masks)
    meta = {"method": "mser_sgpo", "config": to_dict(cfg), "category_ids": category_ids,
            "categories": {str(k): v for k, v in records.categories.items()}}
    save_trained(workdir, None, meta, started)  # the weights are the stages' model.pt
    return MSERSGPOPredictor(models, cfg, category_ids, records.categories, workdir, thresholds)


def check_config(cfg: MSERSGPOConfig, source: str | Path | None = None) -> None:
    """Config errors before anything trains: PRM's rules for the photo-recipe switches, plus MSER's."""
    if cfg.erasing.stages < 1:
        raise InputError(source or "command line", f"erasing.stages must be >= 1, got {cfg.erasing.stages}")
    if cfg.model.frozen_stages:
        raise InputError(source or "config", "model.frozen_stages is not available for MSER: its cache holds the "
                         "images as they are on disk, not the erased ones; use model.frozen_backbone=true")
    check(cfg)  # type: ignore[arg-type]  # PRM's sections under the same names


def _stage_settings(cfg: MSERSGPOConfig, t: int, num_images: int) -> dict:
    """What a stage's network depends on; a finished stage is reused only if this matches. Written in
    the layout of the first MSER runs (``prm``: the classifier section then), so that their finished
    stages still match; schedule settings those runs did not have are added only when they are set."""
    model, data, sched = to_dict(cfg.model), to_dict(cfg.data), to_dict(cfg.schedule)
    prm = {"image_size": data["image_size"], "batch_size": sched["batch_size"], "lr": sched["lr"],
           "backbone_lr_mult": sched["backbone_lr_mult"], "momentum": sched["momentum"],
           "weight_decay": sched["weight_decay"], "epochs": sched["epochs"], "hflip": data["hflip"],
           "sub_pixel_factor": model["sub_pixel_factor"], "win_size": model["win_size"],
           "peak_filter": model["peak_filter"], "class_threshold": cfg.test.class_threshold}
    defaults = to_dict(PRMScheduleConfig())
    prm.update({k: sched[k] for k in ("iterations", "warmup_iterations", "lr_steps", "grad_clip")
                if sched[k] != defaults[k]})
    train = {"backbone": model["backbone"], "pretrained": model["pretrained"], "seed": cfg.seed, "prm": prm}
    recipe = {"frozen_backbone": cfg.model.frozen_backbone, "class_prior": cfg.model.class_prior,
              "calibration": to_dict(cfg.calibration)}
    if cfg.model.frozen_backbone:
        recipe["train_sub_pixel_factor"] = cfg.model.train_sub_pixel_factor
    if recipe["frozen_backbone"] or recipe["class_prior"] != "none" or cfg.calibration.thresholds != "fixed":
        train["recipe"] = recipe  # only when set: the stages of runs before these switches still match
    erasing = {k: v for k, v in to_dict(cfg.erasing).items() if k != "stages"}
    erased = None if t == 1 else {"erasing": erasing, "peak_threshold": cfg.test.peak_threshold,
                                   "max_peaks_per_class": cfg.test.max_peaks_per_class}
    return {"stage": t, "images": num_images, "train": train, "erased_by_earlier_stages": erased}


def _check_settings(path: Path, settings: dict) -> None:
    """The settings file of a stage (or its erase masks): written by the main process when missing, an
    error when it says other settings; the other processes of a torchrun job wait for it."""
    if dist_utils.is_main():
        _check_settings_file(path, settings)
    dist_utils.barrier()


def _check_settings_file(path: Path, settings: dict) -> None:
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(path, f"malformed JSON: {e}") from None
        if found != json.loads(json.dumps(settings)):
            raise InputError(path, "this stage was made with other settings; use another workdir")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            json.dump(settings, f, indent=2)


def train_stage(recs: list[ImageRecord], category_ids: list[int], cfg: MSERSGPOConfig, stage_dir: Path,
                masks: list[Path | None], t: int, names: list[str] | None = None,
                workdir: Path | None = None) -> PRMNet:
    """Stage t's classifier on the images erased by ``masks`` (None = original); a finished stage loads.
    ``names`` (the classes' names, for the ImageNet prior) and ``workdir`` (where the frozen backbone's
    features are cached unless ``data.feature_cache``) are needed by the photo-recipe switches."""
    _check_settings(stage_dir / STAGE_FILE, _stage_settings(cfg, t, len(recs)))
    if (stage_dir / MODEL_FILE).is_file():
        return load_stage_model(stage_dir, cfg, len(category_ids))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(category_ids))
    if cfg.model.class_prior == "imagenet" and names is None:
        raise ValueError("model.class_prior=imagenet needs the class names")
    if cfg.model.frozen_backbone:
        train_frozen_stage(model, recs, category_ids, cfg, stage_dir, masks, names or [],
                           workdir if workdir is not None else stage_dir.parent)
        return model
    if cfg.model.class_prior == "imagenet":
        apply_prior(model, names or [])
    transform = None
    if any(m is not None for m in masks):
        transform = EraseTransform(masks, fill_value(cfg.erasing.fill, model.backbone.mean))
    dataset = TagDataset(recs, category_ids, image_size=cfg.data.image_size, train=cfg.data.hflip,
                         normalize=model.backbone.normalize, seed=cfg.seed, image_transform=transform)

    train_finetuned(model, dataset, cfg.schedule, stage_dir, {"method": "mser_sgpo", "stage": t, "config": to_dict(cfg)},
                    device=cfg.device, seed=cfg.seed, num_workers=cfg.num_workers)
    save_weights(stage_dir / MODEL_FILE, model)
    return model


def train_frozen_stage(model: PRMNet, recs: list[ImageRecord], category_ids: list[int], cfg: MSERSGPOConfig,
                       stage_dir: Path, masks: list[Path | None], names: list[str], workdir: Path) -> None:
    """The photo recipe's stage: PRM's class layer on cached frozen-backbone features of the stage's
    (erased) images, per-class thresholds calibrated on them when ``calibration.thresholds=calibrated``
    (written to ``thresholds.json``), then the weights (``model.pt``, which marks the stage finished)."""
    cache = feature_cache(model, cfg, workdir)  # type: ignore[arg-type]
    fill = fill_value(cfg.erasing.fill, model.backbone.mean)
    feats, flipped = stage_features(cache, recs, masks, fill, cfg.data.hflip)
    result = fit_frozen_features(model, feats, flipped, tag_targets(recs, category_ids).float(), names,
                                 cfg)  # type: ignore[arg-type]
    stage_dir.mkdir(parents=True, exist_ok=True)
    report = {"class_thresholds": [float(x) for x in result.thresholds], "calibration": result.calibration,
              "head_losses": [result.losses[0], result.losses[-1]] if result.losses else [],
              "erased_images": sum(m is not None for m in masks), "features_computed": cache.computed}
    with atomic_write(stage_dir / THRESHOLDS_FILE) as f:
        json.dump(report, f, indent=2)
    save_weights(stage_dir / MODEL_FILE, model)


def read_thresholds(stage_dir: Path) -> list[float] | None:
    """A frozen stage's per-class thresholds (``thresholds.json``), None for a stage without them."""
    path = stage_dir / THRESHOLDS_FILE
    if not path.is_file():
        return None
    try:
        return [float(x) for x in json.loads(path.read_text())["class_thresholds"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(path, f"cannot read the stage's class thresholds ({e})") from None


def load_stage_model(stage_dir: Path, cfg: MSERSGPOConfig, num_classes: int) -> PRMNet:
    model = build_model(cfg.model, num_classes, pretrained=False)
    load_weights(model, stage_dir / MODEL_FILE)
    return model


def stage_image(record: ImageRecord, size: int, mask_path: Path | None, fill: torch.Tensor) -> torch.Tensor:
    """(3, S, S) image I^t in [0, 1]: the original resized, erased by the cumulative mask of I^t."""
    x = resize_square(load_image(record.path), size)
    if mask_path is None:
        return x
    return apply_erase(x, torch.from_numpy(load_mask(mask_path)), fill)


def erase_stage(model: PRMNet, recs: list[ImageRecord], category_ids: list[int], cfg: MSERSGPOConfig,
                stage_dir: Path, masks: list[Path | None]) -> list[Path]:
    """Eqs. 2-3 with stage t's network on every I^t; returns the cumulative masks of I^{t+1}.
    Masks already on disk are kept (a resumed run recomputes only the missing ones)."""
    erase_dir = stage_dir / ERASE_DIR
    erasing = {k: v for k, v in to_dict(cfg.erasing).items() if k != "stages"}  # the layout of the first runs
    _check_settings(erase_dir / ERASE_SETTINGS, {"erasing": erasing, "peak_threshold": cfg.test.peak_threshold,
                                                 "max_peaks_per_class": cfg.test.max_peaks_per_class,
                                                 "image_size": cfg.data.image_size})
    device = pick_device(cfg.device)
    model = model.to(device).eval()
    fill = fill_value(cfg.erasing.fill, model.backbone.mean)
    column = {c: i for i, c in enumerate(category_ids)}
    out = [erase_dir / f"{r.image_id}.npz" for r in recs]
    # under torchrun each process erases its share of the images, so every file has one writer; the
    # shares are fixed by position (not by what is on disk, which another process may be writing)
    mine = range(dist_utils.get_rank(), len(out), dist_utils.get_world_size())
    todo = [i for i in mine if not out[i].is_file()]
    for i in tqdm(todo, desc=f"erase {stage_dir.name}", unit="img", disable=not todo or not dist_utils.is_main()):
        x = stage_image(recs[i], cfg.data.image_size, masks[i], fill)
        xn = model.backbone.normalize(x[None]).to(device)
        allowed = torch.zeros(len(category_ids), dtype=torch.bool)
        allowed[[column[c] for c in recs[i].tags if c in column]] = True
        _, prms, _ = peak_response_maps(model, xn, select=lambda crm, allowed=allowed: peaks_from_crm(model, crm, allowed, cfg),
                                        batched=_batched(cfg, device))
        new = erase_mask(prms.cpu(), cfg.erasing.delta, cfg.erasing.scale)
        previous = torch.from_numpy(load_mask(masks[i])) if masks[i] is not None else torch.zeros_like(new)
        save_mask(out[i], previous | new)
    dist_utils.barrier()  # the next stage reads every process's masks
    return out


# -- loading -------------------------------------------------------------------------------------

def load(workdir: str | Path, overrides: Sequence[str] = ()) -> "MSERSGPOPredictor":
    workdir = Path(workdir)
    meta, cfg = read_trained(workdir, MSERSGPOConfig, migrate_mser_config, overrides)
    cfg.test.fill.check()
    category_ids, categories = trained_categories(meta)
    stage_dirs = [workdir / f"stage{t}" for t in range(1, cfg.erasing.stages + 1)]
    models = [load_stage_model(d, cfg, len(category_ids)) for d in stage_dirs]
    thresholds = [read_thresholds(d) for d in stage_dirs]
    if any(t is not None for t in thresholds) and any(o.split("=", 1)[0].strip() == "test.class_threshold"
                                                      for o in overrides):
        # as PRM's load: an explicit threshold is the user's choice and replaces the calibrated ones
        print("test.class_threshold given: it replaces the per-class thresholds calibrated on the training images")
        thresholds = [None] * len(models)
    return MSERSGPOPredictor(models, cfg, category_ids, categories, workdir, thresholds)


# -- inference -----------------------------------------------------------------------------------

@dataclass
class StageResponse:
    """One network's view of an image: its peaks (K, 4) [0, class, y, x], PRMs (K, S, S), class maps (C, S, S)."""

    peaks: np.ndarray
    prms: np.ndarray
    class_maps: np.ndarray
    grid_size: int  # side of the (upsampled) CRM grid the peaks index


def fuse_representations(responses: Sequence[StageResponse], fusion: str, match_radius: float
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPRM instance representations from the stages' responses (module docstring, step 2):
    ``(prms (N, S, S), map_index (N,) into class_maps, class_maps (T*C, S, S))``; the class of
    representation n is ``map_index[n] % C``."""
    num_classes = responses[0].class_maps.shape[0]
    class_maps = np.concatenate([r.class_maps for r in responses])
    prms = [r.prms for r in responses]
    index = [r.peaks[:, 1] + t * num_classes for t, r in enumerate(responses)]
    if fusion == "union" or len(responses) == 1:
        return np.concatenate(prms), np.concatenate(index).astype(np.int64), class_maps
    if fusion != "match":
        raise ValueError(f"unknown fusion {fusion!r}; expected union or match")
    base, base_peaks = prms[0].copy(), responses[0].peaks
    radius = match_radius * responses[0].grid_size  # peaks are CRM-grid coordinates
    extra, extra_index = [], []
    for t in range(1, len(responses)):
        peaks = responses[t].peaks
        d = np.linalg.norm(peaks[:, None, 2:].astype(np.float64) - base_peaks[None, :, 2:], axis=2)
        d[peaks[:, None, 1] != base_peaks[None, :, 1]] = np.inf
        d = np.concatenate([d, np.full((len(peaks), 1), np.inf)], axis=1)  # column K: "no match"
        nearest = d.argmin(axis=1)
        close = d[np.arange(len(peaks)), nearest] <= radius
        np.add.at(base, nearest[close], prms[t][close])
        extra.append(prms[t][~close])
        extra_index.append(index[t][~close])
    sums = base.reshape(len(base), -1).sum(axis=1)
    base = base / np.where(sums > 0, sums, 1.0)[:, None, None]
    out = np.concatenate([base] + extra) if extra else base
    out_index = np.concatenate([index[0]] + extra_index) if extra_index else index[0]
    return out.astype(np.float32), out_index.astype(np.int64), class_maps


@register("mser_sgpo", MSERSGPOConfig)
class MSERSGPOPredictor(Predictor):
    """The T stage classifiers plus EPRM fusion and proposal scoring."""

    inference_keys = ("device", "proposals", "test", "erasing.stages")

    def __init__(self, models: Sequence[PRMNet], cfg: MSERSGPOConfig, category_ids: list[int],
                 categories: dict[int, str], workdir: Path,
                 thresholds: Sequence[Sequence[float] | None] | None = None) -> None:
        super().__init__(cfg, category_ids, categories, workdir)
        self.base = PRMPredictor(models[0], cfg, category_ids, categories, Path(workdir))  # input preparation
        self.models = [m.to(self.device).eval() for m in models]
        # per network: its calibrated per-class thresholds, or None for test.class_threshold
        thresholds = list(thresholds) if thresholds is not None else [None] * len(models)
        if len(thresholds) != len(models):
            raise ValueError(f"{len(thresholds)} threshold lists for {len(models)} networks")
        self.thresholds = [None if t is None else torch.tensor(list(t), dtype=torch.float32) for t in thresholds]
        self._saliency = None

    def variant(self, stages: int | None = None, scoring: str | None = None, fusion: str | None = None
                ) -> "MSERSGPOPredictor":
        """The same networks predicting with the first ``stages`` of them and another scoring/fusion."""
        stages = self.cfg.erasing.stages if stages is None else stages
        if not 1 <= stages <= len(self.models):
            raise ValueError(f"stages must be in 1..{len(self.models)}, got {stages}")
        other = copy.copy(self)
        test = dataclasses.replace(self.cfg.test, scoring=scoring or self.cfg.test.scoring,
                                   fusion=fusion or self.cfg.test.fusion)
        other.cfg = dataclasses.replace(self.cfg, test=test, erasing=dataclasses.replace(self.cfg.erasing, stages=stages))
        return other

    @property
    def saliency(self):
        if self._saliency is None:
            self._saliency = get_saliency(self.cfg.test.retrieval.saliency)
        return self._saliency

    @torch.no_grad()
    def class_decisions(self, image: np.ndarray, skip: int = 0) -> list[torch.Tensor | None]:
        """Per used stage (but the first ``skip``), the classes passing its thresholds scored at the
        training resolution when ``test.image_size`` moves the localisation elsewhere (PRM's
        :meth:`~wsis.methods.prm.PRMPredictor.class_decision`); Nones otherwise."""
        models = self.models[skip: self.cfg.erasing.stages]
        if self.base.localisation_size() == self.cfg.data.image_size:
            return [None] * len(models)
        x = self.base.prepare(image, self.cfg.data.image_size)
        thresholds = self.thresholds[skip: self.cfg.erasing.stages]
        out: list[torch.Tensor | None] = []
        for m, th in zip(models, thresholds):
            scores = scores_and_peaks(m, m.crm(x))[0][0]
            limit = torch.as_tensor(self.cfg.test.class_threshold if th is None else th, dtype=scores.dtype)
            out.append(scores >= limit.to(scores.device))
        return out

    def stage_responses(self, x: torch.Tensor, skip: int = 0,
                        allowed: Sequence[torch.Tensor | None] | None = None) -> list[StageResponse]:
        """Peaks, PRMs and upsampled class maps of every used stage (but the first ``skip``) for one
        prepared image (1, 3, S, S); ``allowed`` (from :meth:`class_decisions`) replaces each stage's
        class test on ``x``'s own scores."""
        models = self.models[skip: self.cfg.erasing.stages]
        thresholds = self.thresholds[skip: self.cfg.erasing.stages]
        allowed = list(allowed) if allowed is not None else [None] * len(models)
        batched = _batched(self.cfg, self.device)
        if batched and len(models) > 1:  # one pass over the stacked networks, peaks batched too
            maps = stacked_peak_response_maps(
                models, x, lambda t, m, crm: peaks_from_crm(m, crm, allowed[t], self.cfg, thresholds[t]))
        else:
            maps = [peak_response_maps(m, x, select=lambda crm, m=m, th=th, a=a: peaks_from_crm(m, crm, a, self.cfg, th),
                                       batched=batched) for m, th, a in zip(models, thresholds, allowed)]
        out = []
        for peaks, prms, crm in maps:
            class_maps = torch.nn.functional.interpolate(crm[None], size=x.shape[-2:], mode="bicubic",
                                                         align_corners=False)[0]
            out.append(StageResponse(peaks.cpu().numpy(), prms.cpu().numpy(), class_maps.cpu().numpy(),
                                     int(max(crm.shape[-2:]))))
        return out

    def instances(self, record: ImageRecord, image: np.ndarray, responses: Sequence[StageResponse]) -> Instances:
        """Instances of one image from its stage responses (the first ``erasing.stages`` are used)."""
        h, w = image.shape[:2]
        test = self.cfg.test
        responses = list(responses)[: self.cfg.erasing.stages]
        prms, index, class_maps = fuse_representations(responses, test.fusion, test.match_radius)
        props = self.proposals(record)
        if len(prms) == 0 or len(props) == 0 or props.masks is None:
            return Instances((h, w), masks=[])
        s = prms.shape[-1]
        small = mask_ops.decode_resized(props.masks, props.image_size, s, s)
        if test.scoring == "prm":
            found = retrieve(prms, index, class_maps, small, test.retrieval)
        else:
            sal = cv2.resize(self.saliency(image, record.path), (s, s), interpolation=cv2.INTER_LINEAR)
            found = sgpo_retrieve(prms, index, class_maps, sal, small, test.retrieval)
        num_classes = len(self.category_ids)
        index_kept, classes, scores = found.proposal_index, found.peak_classes % num_classes, found.scores
        if test.fill.per_class:
            # the fill ranks by what any stage's class map sees of the class (the stages' maximum)
            stage_max = class_maps.reshape(-1, num_classes, s, s).max(axis=0)
            index_kept, classes, scores = with_fill(index_kept, classes, scores, index % num_classes, stage_max, small,
                                                    test.fill, test.retrieval.size_limit)
        chosen = [props.masks[i] for i in index_kept]
        labels = self.labels_of(classes)
        return Instances((h, w), boxes=mask_ops.to_bbox(chosen), labels=labels, scores=scores, masks=chosen)

    def predict(self, record: ImageRecord, image: np.ndarray | None = None) -> Instances:
        image = load_image(record.path) if image is None else image
        return self.instances(record, image, self.stage_responses(self.base.prepare(image),
                                                                  allowed=self.class_decisions(image)))

