"""Label-PEnet's configuration in the toolkit's skeleton (device/seed/num_workers; model; data; one
schedule per phase; proposals; test; the paper's own stages: calibration, crf, curriculum).
Dataclass defaults are the paper's values (``papers/001``, sections 4.1-4.2) where it gives them;
``wsis/configs/labelpenet.yaml`` (paper), ``labelpenet_cpu.yaml`` and ``demo_labelpenet.yaml`` say
where each value comes from."""
from __future__ import annotations

from dataclasses import dataclass, field

from wsis.cues.crf import CRFConfig
from wsis.engine.schedule import ScheduleConfig
from wsis.proposals.config import ProposalConfig

MODULES = ("classification", "detection", "refinement", "segmentation")


@dataclass
class LabelPENetModelConfig:
    # VGG-16 in the paper; its ImageNet weights are not on this machine, so the packaged
    # EfficientNet-Lite0 stands in (model.backbone=vgg16 when torchvision's file is in the hub cache).
    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool | str = True
    output_stride: int = 16          # every module works on one stride-16 level (4.1)
    # false: an EfficientNet-Lite's features without its 1 x 1 head conv (320 channels, not 1280;
    # wsis.backbones.strided_backbone), the CPU configs' choice: fc6 and RoI pooling 4x cheaper
    backbone_head: bool = True
    frozen_stages: int = 99          # the backbone is fixed in cascaded pre-training (4.2): all stages
    train_backbone_curriculum: bool = True  # "all layers ... trained end to end" in forward-backward learning
    roi_size: int = 7                # RoI pooling of the detection branches (4.2)
    mask_roi_size: int = 14          # RoI pooling of the segmentation branch (4.2)
    hidden: int = 4096               # fc6 / fc7
    dropout: float = 0.5
    aspp_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 6])
    aspp_channels: int = 256
    # RPN anchors: 3 scales x 3 aspect ratios, k = 9 per position (4.2; Faster R-CNN's sizes)
    anchor_sizes: list[int] = field(default_factory=lambda: [128, 256, 512])
    anchor_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 300
    box_batch_size_per_image: int = 512


@dataclass
class LabelPENetDataConfig:
    scales: list[int] = field(default_factory=lambda: [480, 576, 688, 864, 1024])  # shorter side (4.2)
    max_size: int = 1200
    hflip: bool = True
    # the classification module's proposals narrower or shorter than this (image pixels) are dropped
    # in training, labelling and test (0: none; the paper keeps all of selective search's ~1,600)
    min_proposal_size: float = 0.0


@dataclass
class LabelPENetSchedules:
    """One iteration schedule per cascaded module (4.2: batch 2, lr 1e-3 for 40k then 1e-4 for 10k,
    momentum 0.9, weight decay 5e-4, the same for all four), and the forward-backward phase (1e-4, 80k)."""

    classification: ScheduleConfig = field(default_factory=lambda: _pretraining())
    detection: ScheduleConfig = field(default_factory=lambda: _pretraining())
    refinement: ScheduleConfig = field(default_factory=lambda: _pretraining())
    segmentation: ScheduleConfig = field(default_factory=lambda: _pretraining())
    forward_backward: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(
        iterations=80000, batch_size=2, lr=0.0001, momentum=0.9, weight_decay=0.0005, checkpoint_every=2000))


def _pretraining() -> ScheduleConfig:
    return ScheduleConfig(iterations=50000, batch_size=2, lr=0.001, momentum=0.9, weight_decay=0.0005,
                          lr_steps=[40000], checkpoint_every=2000)


@dataclass
class CalibrationConfig:
    """Proposal calibration (3.2): per-class NMS, instance attention and confident maps."""

    nms_iou: float = 0.5             # a proposal suppressed by R^c (IoU > this) adds its attention to A^c
    # instances per tagged class: 1 after the classification module (one candidate per label), up to
    # this many after the detection module and the refinement module ("multiple object candidates")
    max_instances: int = 5
    # a further candidate of a class is kept when its score is >= this fraction of the class's best
    min_relative_score: float = 0.5
    test_size: int = 600             # shorter side at which modules label the training images


@dataclass
class CurriculumConfig:
    """Forward-backward learning with curriculum (3.3)."""

    beta: float = 0.5                # proposal IoU > beta with a detected object -> its label, else background
    single_label_weight: float = 1.0
    detection_threshold: float = 0.5  # detections of the next module taken as objects in the backward phase


@dataclass
class LabelPENetTestConfig:
    module: str = "segmentation"     # which module predicts (the ladder of Table 2 asks for each)
    size: int = 600                  # "an image with original size": shorter side, capped by data.max_size
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    class_threshold: float = 0.1     # classification / detection modules: classes predicted present
    mask_threshold: float = 0.5
    refine_masks: bool = True        # segmentation results post-processed by the CRF (Fig. 3)


@dataclass
class LabelPENetConfig:
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    model: LabelPENetModelConfig = field(default_factory=LabelPENetModelConfig)
    data: LabelPENetDataConfig = field(default_factory=LabelPENetDataConfig)
    schedule: LabelPENetSchedules = field(default_factory=LabelPENetSchedules)
    # selective search, about 1,600 boxes per image (4.2)
    proposals: ProposalConfig = field(default_factory=lambda: ProposalConfig(
        method="selective_search", settings={"max_proposals": 1600}))
    test: LabelPENetTestConfig = field(default_factory=LabelPENetTestConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
