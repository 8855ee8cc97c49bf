"""PRM's configuration, in the skeleton every method shares: ``model`` (the network), ``data`` (what
it is fed), ``schedule`` (how long and how it is trained), ``proposals``, ``test`` (what is read only at
inference) and PRM's own ``calibration`` of the class thresholds. Defaults are the reference
implementation's values (``ZhouYanzhao/PRM`` ``demo/config.yml`` and ``PeakResponseMapping``) except
the backbone, whose reference (ResNet-50) weights cannot be shipped: ``wsis/configs/prm.yaml`` names it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from wsis.cues.prm import PeakFilter
from wsis.engine.schedule import ScheduleConfig
from wsis.proposals.config import ProposalConfig
from wsis.proposals.fill import FillConfig
from wsis.proposals.retrieval import RetrievalConfig

PeakBackprop = Literal["auto", "batched", "loop"]


@dataclass
class PRMNetConfig:
    """The peak-stimulated classifier (Eqs. 1-2)."""

    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    sub_pixel_factor: int = 8
    win_size: int = 3
    peak_filter: PeakFilter = "median"


@dataclass
class PRMModelConfig(PRMNetConfig):
    """PRM's network plus the choices a small dataset needs (``wsis.methods.prm.frozen``): a frozen
    backbone whose features are cached on disk, and the class layer started from the ImageNet head."""

    frozen_backbone: bool = False
    class_prior: Literal["imagenet", "none"] = "none"
    train_sub_pixel_factor: int = 1  # frozen backbone only: the peak search of the training loss
    # fine-tuning only, not in the paper: the stem and this many backbone stages stay frozen, their
    # output cached on disk (wsis.methods.prm.staged); 0 fine-tunes every layer, as the paper
    frozen_stages: int = 0


@dataclass
class PRMDataConfig:
    image_size: int = 448  # square training and test input
    hflip: bool = True  # random horizontal flips, probability 0.5 (the reference's horizontal_flip: 0.5)


@dataclass
class PRMFeatureDataConfig(PRMDataConfig):
    feature_cache: str | None = None  # frozen backbone only; default <workdir>/features


@dataclass
class PRMScheduleConfig(ScheduleConfig):
    """The reference's: 20 epochs of batch 16, SGD momentum 0.9, weight decay 1e-4, lr 0.01 for the
    class layer and 0.01x that for the backbone. With a frozen backbone it is the class layer's."""

    iterations: int | None = None
    epochs: int | None = 20
    batch_size: int = 16
    lr: float = 0.01
    backbone_lr_mult: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    log_every: int = 50
    checkpoint_every: int | None = None  # after every epoch


@dataclass
class PRMTestConfig:
    # A peak gets a PRM only if its class score (a logit) is >= class_threshold (or the run's
    # calibrated per-class thresholds) and its CRM value is above peak_threshold (wsis.cues.peaks).
    class_threshold: float = 0.0
    # The reference's 30 is on its ResNet-50 CRM scale; other backbones' CRMs live on another scale,
    # so the default keeps every positive peak and bounds the count per class instead.
    peak_threshold: float = 0.0
    max_peaks_per_class: int = 8
    # not in the paper (issue 11): also drop peaks below this fraction of their class's strongest
    # peak in the image (0: off, the paper's rule)
    peak_relative_threshold: float = 0.0
    # "auto": one batched backward over all peaks on CUDA; on a CPU the reference's per-peak loop,
    # which measured faster there (benchmarks/bench_peak_backprop.py). Same maps either way.
    peak_backprop: PeakBackprop = "auto"
    # not in the paper (issue 11): localise at this square input size instead of data.image_size. The
    # class decision (scores against the thresholds, calibrated at the training size) stays at
    # data.image_size; the CRM, peaks, PRMs and retrieval use the larger map (more cells per object:
    # a crowd or a small object can get a peak of its own). None: data.image_size, as the paper.
    image_size: int | None = None
    retrieval: RetrievalConfig = field(default_factory=lambda: RetrievalConfig(proposal_count=None))
    # not in the paper (issue 11): more instances per class than it has peaks (wsis.proposals.fill)
    fill: FillConfig = field(default_factory=FillConfig)


@dataclass
class CalibrationConfig:
    """Per-class thresholds chosen on the training images (frozen backbone only): best F1 on
    out-of-fold scores; classes with fewer than ``min_positives`` positive images share a pooled one."""

    thresholds: Literal["fixed", "calibrated"] = "fixed"
    folds: int = 5
    min_positives: int = 3


@dataclass
class PRMMethodConfig:
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    model: PRMModelConfig = field(default_factory=PRMModelConfig)
    data: PRMFeatureDataConfig = field(default_factory=PRMFeatureDataConfig)
    schedule: PRMScheduleConfig = field(default_factory=PRMScheduleConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    test: PRMTestConfig = field(default_factory=PRMTestConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


# Where each key of the layout before the skeleton (issue 16) went; ``method.json`` files and resumed
# runs are migrated with it, and an old key on the command line or in a YAML file is an error naming
# the new one.
MOVED_KEYS = {
    "backbone": "model.backbone", "pretrained": "model.pretrained",
    "classifier.sub_pixel_factor": "model.sub_pixel_factor", "classifier.win_size": "model.win_size",
    "classifier.peak_filter": "model.peak_filter",
    "classifier.image_size": "data.image_size", "classifier.hflip": "data.hflip",
    "classifier.epochs": "schedule.epochs", "classifier.batch_size": "schedule.batch_size",
    "classifier.lr": "schedule.lr", "classifier.backbone_lr_mult": "schedule.backbone_lr_mult",
    "classifier.momentum": "schedule.momentum", "classifier.weight_decay": "schedule.weight_decay",
    "classifier.class_threshold": "test.class_threshold", "peak_threshold": "test.peak_threshold",
    "max_peaks_per_class": "test.max_peaks_per_class", "peak_backprop": "test.peak_backprop",
    "retrieval": "test.retrieval",
    "fit.frozen_backbone": "model.frozen_backbone", "fit.class_prior": "model.class_prior",
    "fit.train_sub_pixel_factor": "model.train_sub_pixel_factor", "fit.feature_cache": "data.feature_cache",
    "fit.head_epochs": "schedule.epochs", "fit.head_lr": "schedule.lr",
    "fit.thresholds": "calibration.thresholds", "fit.calibration_folds": "calibration.folds",
    "fit.min_positives": "calibration.min_positives",
}

PRMMethodConfig.MOVED_KEYS = MOVED_KEYS  # type: ignore[attr-defined]  # read by wsis.config.moved_keys
