"""PDSL's configuration: dataclass defaults are the paper's values (``papers/002``, section 4.3) where it
gives them; ``wsis/configs/pdsl.yaml`` (GPU, paper schedule) and ``pdsl_cpu.yaml`` say where each
value comes from."""
from __future__ import annotations

from dataclasses import dataclass, field

from wsis.engine.schedule import ScheduleConfig
from wsis.proposals.config import ProposalConfig


@dataclass
class PDSLModelConfig:
    backbone: str = "resnet50"
    pretrained: bool | str = True
    # 16: the last stride-2 stage is dilated (as the ResNet-WS backbones of the paper keep res5 at
    # stride 16); 32: the backbone as built.
    output_stride: int = 16
    frozen_stages: int = 2           # stem + first stage, Detectron's default for ResNets (a large number: all)
    # A 1x1 conv (+ ReLU) from the backbone's channels to this many before both RoI ops (None: none);
    # keeps fc6 at VGG-16's 512 x 7 x 7 inputs for 1280/2048-channel backbones.
    reduce_channels: int | None = 512
    roi_size: int = 7                # RoIPool output (Fast R-CNN / WSDDN)
    hidden: int = 4096               # fc6 / fc7
    dropout: float = 0.5
    refine_heads: int = 4            # n^r
    box_regression: bool = True
    mask_heads: int = 4              # n^m class-specific heads (plus the class-agnostic one)
    mask_channels: int = 256
    mask_convs: int = 4
    mask_roi_size: int = 14          # RoIAlign output; masks are twice this


@dataclass
class PDSLLossConfig:
    fg_iou: float = 0.5
    ignore_iou: float = 0.1
    n_seed: int = 10
    # RoIs per image the mask branch sees (None: every proposal, as in the paper's Eq. 5).
    mask_rois: int | None = None
    mask_fg_fraction: float = 0.5
    hard_mask_targets: bool = False
    correlation: bool = True         # L_ACL (Eqs. 6-8)
    tau: float = 5.0
    # Detection activation of Eq. 8: "score" = S^{n^r}_{p t_p} as in the paper; "relative" = that
    # score divided by its maximum over the image's proposals for the class (masks.py docstring).
    correlation_target: str = "score"


@dataclass
class PDSLDataConfig:
    # Shorter side drawn from these per image (paper: 480..1216, stride 32); longer side capped.
    scales: list[int] = field(default_factory=lambda: list(range(480, 1217, 32)))
    max_size: int = 2000
    hflip: bool = True
    crop: float = 0.9                # a random crop of 0.9 x the image's height and width (1: none)
    hsv: float = 1.5                 # exposure (V) and saturation (S) scaled by a factor in [1/hsv, hsv]


@dataclass
class PDSLTestConfig:
    scales: list[int] = field(default_factory=lambda: [480, 576, 672, 768, 864, 960, 1056, 1152])
    max_size: int = 2000
    flip: bool = True
    nms_threshold: float = 0.5
    # 0: rank only (WSDDN's S^0, the test score when n^r = 0, is ~1/(P C) per proposal)
    score_threshold: float = 0.0
    pre_nms_top_n: int = 4000        # (proposal, class) candidates kept before NMS, best first
    detections_per_image: int = 100
    mask_threshold: float = 0.5


@dataclass
class GrabCutConfig:
    iterations: int = 5
    margin: float = 0.25
    max_side: int = 160
    cache_dir: str | None = None     # default: <workdir>/grabcut


@dataclass
class PDSLScheduleConfig(ScheduleConfig):
    """The shared iteration schedule (:mod:`wsis.engine.schedule`) plus learning-rate multipliers for
    the backbone and the segmentation branch (the paper trains everything at one rate: 1 and 1).

    ``grad_clip`` (ours; the paper does not clip) applies per optimizer group, i.e. per branch, when
    ``grad_clip_per_group``: the MIL loss of Eq. 2 has gradient-norm spikes of 30-100 on images whose
    tagged classes WSDDN misses, and one clip over the whole network then shrinks the mask heads'
    step (norms below 1) by the same factor, which left them at their initial 0.5 outputs."""

    backbone_lr_mult: float = 1.0
    mask_lr_mult: float = 1.0
    grad_clip_per_group: bool = True


@dataclass
class PDSLMethodConfig:
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    model: PDSLModelConfig = field(default_factory=PDSLModelConfig)
    loss: PDSLLossConfig = field(default_factory=PDSLLossConfig)
    schedule: PDSLScheduleConfig = field(default_factory=lambda: PDSLScheduleConfig(
        iterations=240000, batch_size=1, lr=0.01, momentum=0.9, weight_decay=0.0005, lr_steps=[168000],
        checkpoint_every=2000))
    data: PDSLDataConfig = field(default_factory=PDSLDataConfig)
    test: PDSLTestConfig = field(default_factory=PDSLTestConfig)
    proposals: ProposalConfig = field(default_factory=lambda: ProposalConfig(settings={"max_proposals": 2000}))
    grabcut: GrabCutConfig = field(default_factory=GrabCutConfig)


PDSLMethodConfig.MOVED_KEYS = {"augment": "data"}  # type: ignore[attr-defined]  # before the skeleton (wsis.config)
