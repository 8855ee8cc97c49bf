"""PRM (Zhou et al., CVPR 2018) as a method: train a peak-stimulated classifier on image tags, then
for each image back-propagate its class peaks into peak response maps and retrieve, for each peak,
the proposal that best fits its PRM (see :mod:`wsis.retrieval`).

Inference, per image (the reference's ``PeakResponseMapping.forward`` + ``instance_seg``):
1. the image is resized to ``image_size`` squared (as in training) and its upsampled CRMs computed;
2. peaks of classes whose score (a logit) is >= ``class_threshold`` with a CRM value above
   ``peak_threshold`` are kept (at most ``max_peaks_per_class`` per class, highest first) and all
   their PRMs computed in one batched backward pass;
3. proposals are generated for the original image (cached on disk by image content), resized
   (nearest) to the PRM resolution for scoring, and each peak retrieves its best proposal;
4. the kept instance's mask is the chosen proposal at the original resolution, its label the
   peak's class and its score the retrieval score.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsis import masks as mask_ops
from wsis.backbones import create_backbone
from wsis.config import load_config, to_dict
from wsis.cues.peak_backprop import peak_response_maps
from wsis.cues.prm import PRMConfig, PRMNet, peak_stimulation, prm_loss, prm_optimizer, top_peaks
from wsis.data.images import load_image
from wsis.data.torch_data import TagDataset, resize_square
from wsis.engine import Trainer, pick_device
from wsis.errors import InputError
from wsis.methods.trained import MODEL_FILE, load_weights, read_trained, save_trained, trained_categories
from wsis.proposals import Proposals
from wsis.proposals.cache import proposal_cache
from wsis.retrieval import RetrievalConfig, retrieve
from wsis.structures import ImageRecord, Instances, RecordSet


@dataclass
class ProposalConfig:
    method: str = "superpixel"
    settings: dict = field(default_factory=dict)
    cache_dir: str | None = None  # default: the shared cache (wsis.proposals.cache.proposal_cache)


@dataclass
class PRMMethodConfig:
    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    prm: PRMConfig = field(default_factory=PRMConfig)
    # Peaks with CRM value above this get a PRM. The reference's 30 is on its ResNet-50 CRM scale;
    # other backbones' CRMs live on another scale, so the default keeps every positive peak and
    # bounds the count per class instead.
    peak_threshold: float = 0.0
    max_peaks_per_class: int = 8
    # "auto": one batched backward over all peaks on CUDA; on a CPU the reference's per-peak loop,
    # which measured faster there (benchmarks/bench_peak_backprop.py). Same maps either way.
    peak_backprop: Literal["auto", "batched", "loop"] = "auto"
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    retrieval: RetrievalConfig = field(default_factory=lambda: RetrievalConfig(proposal_count=None))




def fit(records: RecordSet, config: str | Path | None = None, overrides: Sequence[str] = (),
        workdir: str | Path = "runs/prm") -> "PRMPredictor":
    """Train the PRM classifier on the records' tags; resumes from ``workdir`` when interrupted."""
    cfg = load_config(PRMMethodConfig, config, list(overrides))
    workdir = Path(workdir)
    category_ids = sorted(records.categories)
    if not any(r.tags for r in records):
        raise InputError(records.name or "dataset", "no image has tags: PRM trains on image-level labels")
    torch.manual_seed(cfg.seed)
    backbone = create_backbone(cfg.backbone, cfg.pretrained)
    model = PRMNet(backbone, len(category_ids), sub_pixel_factor=cfg.prm.sub_pixel_factor,
                   win_size=cfg.prm.win_size, peak_filter=cfg.prm.peak_filter)
    dataset = TagDataset(records.records, category_ids, image_size=cfg.prm.image_size,
                         train=cfg.prm.hflip, normalize=backbone.normalize, seed=cfg.seed)

    def step(net: torch.nn.Module, batch: Any) -> torch.Tensor:
        images, targets = batch
        return prm_loss(net(images), targets)

    meta = {"method": "prm", "config": to_dict(cfg), "category_ids": category_ids,
            "categories": {str(k): v for k, v in records.categories.items()}}
    started = time.perf_counter()
    Trainer(model, prm_optimizer(model, cfg.prm), step_fn=step, workdir=workdir, epochs=cfg.prm.epochs,
            device=cfg.device, seed=cfg.seed, batch_size=cfg.prm.batch_size, num_workers=cfg.num_workers,
            config=meta).fit(dataset)
    save_trained(workdir, model, meta, started)
    return PRMPredictor(model, cfg, category_ids, records.categories, workdir)


def load(workdir: str | Path) -> "PRMPredictor":
    workdir = Path(workdir)
    meta, cfg = read_trained(workdir, PRMMethodConfig)
    category_ids, categories = trained_categories(meta)
    backbone = create_backbone(cfg.backbone, pretrained=False)
    model = PRMNet(backbone, len(category_ids), sub_pixel_factor=cfg.prm.sub_pixel_factor,
                   win_size=cfg.prm.win_size, peak_filter=cfg.prm.peak_filter)
    load_weights(model, workdir / MODEL_FILE)
    return PRMPredictor(model, cfg, category_ids, categories, workdir)


class PRMPredictor:
    """A trained PRM classifier plus the retrieval stage."""

    def __init__(self, model: PRMNet, cfg: PRMMethodConfig, category_ids: list[int],
                 categories: dict[int, str], workdir: Path) -> None:
        self.device = pick_device(cfg.device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.category_ids = category_ids
        self.categories = categories
        self.proposal_cache = proposal_cache(cfg.proposals.cache_dir)

    # -- stages ------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> normalised (1, 3, S, S) tensor at the training resolution."""
        x = resize_square(image, self.cfg.prm.image_size)
        return self.model.backbone.normalize(x[None]).to(self.device)

    def peak_responses(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Peaks' classes (K,), their PRMs (K, S, S) and the class maps (C, S, S) of one image;
        only the maps of the peaks' classes are computed (retrieval reads no other), the rest are 0."""
        batched = self.cfg.peak_backprop == "batched" or (
            self.cfg.peak_backprop == "auto" and self.device.type == "cuda")
        peaks, prms, crm = peak_response_maps(self.model, x, select=self._select_peaks, batched=batched)
        size = tuple(x.shape[-2:])
        used = torch.unique(peaks[:, 1])
        class_maps = np.zeros((len(crm),) + size, np.float32)
        if len(used):
            up = F.interpolate(crm[used][None], size=size, mode="bicubic", align_corners=False)[0]
            class_maps[used.cpu().numpy()] = up.cpu().numpy()
        return peaks[:, 1].cpu().numpy(), prms.cpu().numpy(), class_maps

    @torch.no_grad()
    def _select_peaks(self, crm: torch.Tensor) -> torch.Tensor:
        """Peaks of an upsampled CRM (1, C, h, w) by the rule of the module docstring, step 2."""
        scores = peak_stimulation(crm, self.model.win_size, self.model.peak_filter)[0]
        peaks, values = self.model.find_peaks(crm)
        return top_peaks(peaks, values, scores >= self.cfg.prm.class_threshold, self.peak_threshold,
                         self.cfg.max_peaks_per_class)

    @property
    def peak_threshold(self) -> float:
        return self.cfg.peak_threshold

    def proposals(self, record: ImageRecord) -> Proposals:
        return self.proposal_cache.get_or_compute(record.path, self.cfg.proposals.method,
                                                  **self.cfg.proposals.settings)

    # -- prediction --------------------------------------------------------------------------
    def predict(self, record: ImageRecord, image: np.ndarray | None = None) -> Instances:
        image = load_image(record.path) if image is None else image
        h, w = image.shape[:2]
        x = self.prepare(image)
        classes, prms, class_maps = self.peak_responses(x)
        props = self.proposals(record)
        if len(classes) == 0 or len(props) == 0 or props.masks is None:
            return Instances((h, w), masks=[])
        s = x.shape[-1]
        small = mask_ops.decode_resized(props.masks, props.image_size, s, s)
        found = retrieve(prms, classes, class_maps, small, self.cfg.retrieval)
        chosen = [props.masks[i] for i in found.proposal_index]
        labels = np.asarray(self.category_ids)[found.peak_classes] if len(chosen) else np.zeros(0, np.int64)
        return Instances((h, w), boxes=mask_ops.to_bbox(chosen), labels=labels, scores=found.scores,
                         masks=chosen)

    def predict_records(self, records: RecordSet | Sequence[ImageRecord], progress: bool = True
                        ) -> dict[int, Instances]:
        out: dict[int, Instances] = {}
        for record in tqdm(list(records), desc="predict prm", disable=not progress, unit="img"):
            out[record.image_id] = self.predict(record)
        return out


def _resize_masks_nearest(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W) bool -> (N, height, width), nearest neighbour at pixel centres (OpenCV's
    INTER_NEAREST_EXACT: source index floor((i + 0.5) * H / height)), one mask at a time."""
    out = np.empty((len(masks), height, width), dtype=bool)
    for i, m in enumerate(np.ascontiguousarray(masks).view(np.uint8)):
        out[i] = cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST_EXACT).view(bool)
    return out
