"""The detection module (``papers/003``, 3.2): a detector trained on boxes that yields both the
multi-scale feature maps F = {f_k} (finest first) and the detections B.

* ``kind="ssd"`` (the paper's SSD [21]): torchvision's SSD (or SSDLite head) on EfficientNet-Lite0
  (packaged ImageNet weights): Lite0's stride-8/16/32 stages (40, 112, 320 channels) plus
  ``extra_channels`` stride-2 levels, i.e. 40, 20, 10, 5, 3, 2 cells at 320 px -- the six levels of
  SSD300 (38 ... 1) on a CPU-sized backbone instead of VGG-16. Batch norm of a pretrained body is
  frozen (statistics of small CPU batches are noise).
* ``kind="faster_rcnn"``: torchvision Faster R-CNN on the project's FPN backbones
  (:mod:`wsis.detectors.maskrcnn`: ``lite0_fpn`` or ``resnet50_fpn``), F = P2..P6 (256 channels).

Inputs are (B, 3, S, S) float images in [0, 1] at the network size S; boxes are in S-pixel xyxy.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from wsis.backbones import LITE_MEAN, LITE_STD, create_imagenet_classifier
from wsis.errors import InputError
from wsis.methods.dasnet.config import DASNetDetectorConfig, DASNetTestConfig

LITE0_SSD_STAGES = (2, 3, 4)   # timm feature indices at strides 8, 16, 32
LITE0_SSD_CHANNELS = (40, 112, 320)


class L2Norm(nn.Module):
    """SSD's conv4_3 normalisation: each feature vector scaled to unit L2 norm, times a learned
    per-channel scale (initially ``scale``)."""

    def __init__(self, channels: int, scale: float = 20.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=1, eps=1e-10) * self.weight.view(1, -1, 1, 1)


class _Lite0Pyramid(nn.Module):
    """Lite0 stages at strides 8/16/32 plus SSD's extra levels (1x1 reduce, 3x3 stride 2).

    Lite0's stage outputs are linear projections with mean magnitudes from 1.5 (stride 32) to 5.6
    (stride 8) and peaks near 30; SSD's heads on them diverged within 25 steps at SSD's lr (loss
    1e6, measured). Each backbone level therefore gets SSD's conv4_3 L2 normalisation (scale 20).
    """

    def __init__(self, pretrained: bool | str, extra_channels: list[int], frozen_body: bool = False) -> None:
        super().__init__()
        import timm
        from timm.layers import freeze_batch_norm_2d

        body = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=LITE0_SSD_STAGES,
                                 pretrained=False)
        if pretrained is not False:
            state = create_imagenet_classifier("tf_efficientnet_lite0", pretrained).network.state_dict()
            wanted = set(body.state_dict())
            body.load_state_dict({k: v for k, v in state.items() if k in wanted})
            body = freeze_batch_norm_2d(body)
        self.body = body.requires_grad_(not frozen_body)
        extras, c = [], LITE0_SSD_CHANNELS[-1]
        for out in extra_channels:
            extras.append(nn.Sequential(nn.Conv2d(c, out // 2, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(out // 2, out, 3, stride=2, padding=1), nn.ReLU(inplace=True)))
            c = out
        self.extras = nn.ModuleList(extras)
        self.norms = nn.ModuleList(L2Norm(c) for c in LITE0_SSD_CHANNELS)
        self.channels = list(LITE0_SSD_CHANNELS) + list(extra_channels)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = [norm(f) for norm, f in zip(self.norms, self.body(x))]
        for extra in self.extras:
            feats.append(extra(feats[-1]))
        return OrderedDict((str(i), f) for i, f in enumerate(feats))


class Detector(nn.Module):
    """A torchvision detector plus access to the feature pyramid it detects on."""

    def __init__(self, cfg: DASNetDetectorConfig, num_classes: int, size: int, pretrained: bool | str | None = None,
                 post: DASNetTestConfig | None = None) -> None:
        super().__init__()
        pretrained = cfg.pretrained if pretrained is None else pretrained
        post = post if post is not None else DASNetTestConfig()  # the detector's own test-time candidates
        self.kind, self.size = cfg.kind, size
        if cfg.kind == "ssd":
            self.model, self.mean, self.std, self.channels = _build_ssd(cfg, num_classes, size, pretrained, post)
        elif cfg.kind == "faster_rcnn":
            self.model, self.mean, self.std, self.channels = _build_faster_rcnn(cfg, num_classes, size, pretrained,
                                                                                post)
        else:
            raise InputError("config", f"model.detector.kind must be ssd or faster_rcnn, got {cfg.kind!r}")
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Training losses on boxes (labels 1..K)."""
        return self.model(list(images), targets)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """F = {f_k}, finest level first."""
        return list(self.model.backbone((images - self._mean) / self._std).values())

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """B: per image ``boxes`` (S-pixel xyxy), ``labels`` (1..K), ``scores``."""
        was = self.model.training
        self.model.eval()
        out = self.model(list(images))
        self.model.train(was)
        return out


def _build_ssd(cfg: DASNetDetectorConfig, num_classes: int, size: int, pretrained: bool | str,
               post: DASNetTestConfig):
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead
    from torchvision.models.detection.ssdlite import SSDLiteHead

    if cfg.backbone != "tf_efficientnet_lite0":
        raise InputError("config", f"the SSD detector is built on tf_efficientnet_lite0, not {cfg.backbone!r} "
                         "(use detector.kind=faster_rcnn for the FPN backbones)")
    pyramid = _Lite0Pyramid(pretrained, cfg.extra_channels, cfg.frozen_body)
    levels = len(pyramid.channels)
    # SSD300's aspect ratios: {2} on the first and last two levels, {2, 3} in between.
    ratios = [[2] if i == 0 or i >= levels - 2 else [2, 3] for i in range(levels)]
    anchors = DefaultBoxGenerator(ratios, min_ratio=0.2, max_ratio=0.95)
    counts = anchors.num_anchors_per_location()
    if cfg.head == "ssdlite":
        from functools import partial

        head = SSDLiteHead(pyramid.channels, counts, num_classes + 1, partial(nn.BatchNorm2d, eps=0.001, momentum=0.03))
    else:
        head = SSDHead(pyramid.channels, counts, num_classes + 1)
    model = SSD(pyramid, anchors, (size, size), num_classes + 1, image_mean=list(LITE_MEAN), image_std=list(LITE_STD),
                head=head, score_thresh=post.candidate_score_threshold, nms_thresh=post.candidate_nms_threshold,
                detections_per_img=post.candidates_per_image)
    return model, LITE_MEAN, LITE_STD, pyramid.channels


def _build_faster_rcnn(cfg: DASNetDetectorConfig, num_classes: int, size: int, pretrained: bool | str,
                       post: DASNetTestConfig):
    from torchvision.models.detection import FasterRCNN

    from wsis.detectors.maskrcnn import BUILDERS

    if cfg.backbone not in BUILDERS:
        raise InputError("config", f"faster_rcnn backbone must be one of {', '.join(BUILDERS)}, got {cfg.backbone!r}")
    backbone, mean, std = BUILDERS[cfg.backbone](pretrained)
    model = FasterRCNN(backbone, num_classes=num_classes + 1, min_size=size, max_size=size, image_mean=list(mean),
                       image_std=list(std), box_score_thresh=post.candidate_score_threshold,
                       box_nms_thresh=post.candidate_nms_threshold, box_detections_per_img=post.candidates_per_image)
    return model, mean, std, [backbone.out_channels] * 5
