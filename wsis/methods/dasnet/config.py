"""DASNet's configuration. Dataclass defaults are the paper's values (``papers/003``, 4.1) where it gives
them; ``wsis/configs/dasnet.yaml`` is the paper schedule, ``dasnet_cpu.yaml`` and ``demo_dasnet.yaml``
say in their headers what they change and why."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from wsis.engine.schedule import ScheduleConfig


@dataclass
class DASNetDetectorConfig:
    # "ssd": torchvision's SSD on an EfficientNet-Lite0 pyramid (the paper's detector family, 3.2);
    # "faster_rcnn": torchvision Faster R-CNN on the project's FPN backbones (the paper: "any detector").
    kind: Literal["ssd", "faster_rcnn"] = "ssd"
    # ssd: the timm backbone (only tf_efficientnet_lite0 has packaged weights); faster_rcnn: lite0_fpn | resnet50_fpn
    backbone: str = "tf_efficientnet_lite0"
    head: Literal["ssd", "ssdlite"] = "ssd"          # SSD's 3x3 conv predictors or SSDLite's separable ones
    pretrained: bool | str = True
    # ssd only: keep the ImageNet Lite0 body fixed and train the L2 norms, extra levels and heads
    # (a CPU saving: the body's backward pass is ~2/3 of a step). The paper fine-tunes everything.
    frozen_body: bool = False
    # Channels of the extra stride-2 SSD levels after Lite0's stride 8/16/32 stages (SSD300's conv8-11).
    extra_channels: list[int] = field(default_factory=lambda: [256, 128, 128])
    # A finished detector stage (``<workdir>/detector/model.pt`` of another DASNet run) to reuse instead
    # of training stage 1 again: the detector only depends on boxes, the same for every mask budget.
    weights: str | None = None


@dataclass
class DASNetSegmentationConfig:
    # Deconvolution layers (each x2) after the last merge (finest detector level, stride 8 for SSD):
    # 3 gives the input resolution (the paper's "mask in the same size as the input image").
    top_layers: int = 3
    top_channels: int = 64
    k: int = 7                       # position-sensitive grid (3.4.2)
    roi_size: int = 28               # assembled per-box map side (a multiple of k)
    positives: int = 2               # p per ground-truth box (3.5)
    negatives: int = 4               # n per ground-truth box
    fg_iou: float = 0.5              # a sampled box matching a ground-truth box above this is positive
    # Joint training (3.5): segmentation gradients also update the detector through Eq. 1. The paper
    # trains stage-wise (detector frozen), as do all our configs.
    finetune_detector: bool = False


@dataclass
class DASNetDataConfig:
    # Which training images keep their masks: "all", a number N (the first N by ascending image id,
    # BENCHMARK.md), or a text file with one image id or file name per line. The rest keep boxes only.
    masks_for: str = "all"
    size: int = 320                  # square network input (4.1)
    expand_prob: float = 0.5         # SSD's zoom-out: the image on a mean-filled canvas up to max_expand x
    max_expand: float = 4.0
    crop: bool = True                # SSD's IoU-constrained random crop
    min_crop: float = 0.3
    hflip: bool = True
    brightness: float = 0.125
    contrast: float = 0.5
    saturation: float = 0.5
    noise_std: float = 0.02          # additive Gaussian noise, in [0, 1] intensity units
    # Random number of class-specific boxes per segmentation sample (4.1, "combinatorial cropping")
    random_boxes: bool = True


@dataclass
class DASNetTestConfig:
    # The detector's own post-processing (SSD's, [21]): candidates above this score, NMS, at most this many
    candidate_score_threshold: float = 0.01
    candidate_nms_threshold: float = 0.45
    candidates_per_image: int = 200
    score_threshold: float = 0.3     # detections kept for segmentation
    detections_per_image: int = 20
    mask_threshold: float = 0.5
    chunk: int = 16                  # boxes / classes per decoder batch
    masks: Literal["instance", "boxes"] = "instance"   # "boxes": the boxes-as-masks baseline


@dataclass
class DASNetSchedules:
    # SSD300's VOC schedule ([21]: lr 1e-3 for 40K, then 1e-4 and 1e-5 for 10K each, batch 32).
    detection: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(
        iterations=60000, batch_size=32, lr=0.001, momentum=0.9, weight_decay=0.0005, lr_steps=[40000, 50000],
        checkpoint_every=1000))
    # 4.1: SGD momentum 0.9, lr 0.01 (semantic) / 0.02 (instance), /10 after 15K and 30K, batch 32.
    # The paper gives no total; 40K (10K after the last step) is ours.
    semantic: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(
        iterations=40000, batch_size=32, lr=0.01, momentum=0.9, weight_decay=0.0005, lr_steps=[15000, 30000],
        checkpoint_every=1000))
    instance: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(
        iterations=40000, batch_size=32, lr=0.02, momentum=0.9, weight_decay=0.0005, lr_steps=[15000, 30000],
        checkpoint_every=1000))


@dataclass
class DASNetModelConfig:
    tasks: list[str] = field(default_factory=lambda: ["semantic", "instance"])
    detector: DASNetDetectorConfig = field(default_factory=DASNetDetectorConfig)
    segmentation: DASNetSegmentationConfig = field(default_factory=DASNetSegmentationConfig)


@dataclass
class DASNetConfig:
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    model: DASNetModelConfig = field(default_factory=DASNetModelConfig)
    data: DASNetDataConfig = field(default_factory=DASNetDataConfig)
    schedule: DASNetSchedules = field(default_factory=DASNetSchedules)
    test: DASNetTestConfig = field(default_factory=DASNetTestConfig)


DASNetConfig.MOVED_KEYS = {  # type: ignore[attr-defined]  # the layout before the skeleton (wsis.config)
    "detector.score_threshold": "test.candidate_score_threshold",
    "detector.nms_threshold": "test.candidate_nms_threshold",
    "detector.detections_per_image": "test.candidates_per_image",
    "detector": "model.detector", "segmentation": "model.segmentation", "tasks": "model.tasks",
    "augment": "data", "masks_for": "data.masks_for"}
