"""torchvision Mask R-CNN on the toolkit's backbones, its training data and its predictions.

Backbones (``DetectorConfig.backbone``):

* ``resnet50_fpn`` -- the paper's (WISE 4.2; He et al.): torchvision's ResNet-50-FPN with frozen
  batch norm and the stem + layer1 frozen (torchvision's ``trainable_backbone_layers=3``), ImageNet
  weights from the torch hub cache or a file (:func:`wsis.backbones.create_imagenet_classifier`;
  a clear :class:`~wsis.errors.InputError` when absent).
* ``lite0_fpn`` -- the CPU default: timm's EfficientNet-Lite0 stages at strides 4/8/16/32 (24, 40,
  112, 320 channels; packaged ImageNet weights) with frozen batch norm (live when random-init), under torchvision's
  ``FeaturePyramidNetwork`` (256 channels, plus the max-pooled P6 level), so anchors, RoI heads and
  losses are exactly those of the ResNet-50-FPN model.

Class indices: torchvision reserves label 0 for background, so dataset category ids map to
``1..K`` in the order of ``category_ids`` (stored with the model, see :class:`LabelMap`).

Training data (:class:`InstanceDataset`): the instances of an image come from a callable
``(record, epoch) -> Instances`` so pseudo labels can be resampled every epoch; horizontal flip and
colour jitter (brightness, contrast, saturation) are drawn from ``(seed, epoch, index)`` only, so
an interrupted run resumes exactly. Images keep their size; the model's own transform resizes them
(shorter side ``min_size``, longer side at most ``max_size``) and normalises them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn
from torch.utils.data import Dataset
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from wsis import masks as mask_ops
from wsis.backbones import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, create_imagenet_classifier
from wsis.data.images import load_image
from wsis.errors import InputError
from wsis.structures import ImageRecord, Instances

DetectorBackbone = Literal["lite0_fpn", "resnet50_fpn"]
LITE0_STAGES = (1, 2, 3, 4)  # timm feature indices at strides 4, 8, 16, 32


@dataclass
class DetectorConfig:
    """The network (a method config's ``model`` section)."""

    backbone: DetectorBackbone = "lite0_fpn"
    # True: ImageNet weights (packaged for lite0, hub cache for ResNet-50); a path: that file; False: random.
    pretrained: bool | str = True
    # torchvision's defaults (Detectron's); small values make tiny test models fast.
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    box_batch_size_per_image: int = 512
    # One anchor size per FPN level (P2..P6), aspect ratios 0.5/1/2. torchvision's (32..512) suit
    # images resized to 800 px; at a 320 px shorter side objects are 2.5x smaller and with these
    # anchors 23 % of the training objects (those under 16 px) have no anchor of IoU >= 0.5 (see
    # benchmarks/results/reference.md), so the CPU configs halve them.
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    # False: the backbone body (not the FPN) is frozen and runs without gradients -- ImageNet
    # features kept as they are, a cheaper step, and a higher learning rate stays stable.
    train_body: bool = True
    # "torchvision": its default init of the output layers; "detectron": see init_predictors_detectron.
    predictor_init: Literal["torchvision", "detectron"] = "torchvision"
    # Width of the FPN outputs (so of the RPN head and the first mask-head conv) and of the four mask-head
    # convs + its deconvolution. 256 is Mask R-CNN's; on a CPU these convs, not the backbone, are most of a
    # step (benchmarks/results/reference.md), and they cost ~width^2. ResNet-50-FPN is built with 256 only.
    fpn_channels: int = 256
    # "group": GroupNorm (32 groups) after each FPN conv (Wu & He's GN variant of Mask R-CNN). Lite0's stage
    # outputs have rms 3-8 (ResNet's ~1), so without it the FPN outputs and RoI features are ~10x
    # ResNet's, the heads' gradients ~50 (reference.md), and lr 0.01 diverges; "none": Mask R-CNN's FPN.
    fpn_norm: Literal["none", "group"] = "none"
    mask_head_channels: int = 256


@dataclass
class DetectorDataConfig:
    """What the detector is fed (``data``): the resize rule, in training and at test time, and the
    training augmentation."""

    min_size: int = 800
    max_size: int = 1333
    hflip: bool = True
    # Colour jitter factors are drawn uniformly from [1 - x, 1 + x] (torchvision ColorJitter's rule).
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4


@dataclass
class DetectorTestConfig:
    """Read only at inference (``test``)."""

    score_threshold: float = 0.05
    mask_threshold: float = 0.5
    detections_per_image: int = 100
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000


class LabelMap:
    """Dataset category ids <-> Mask R-CNN labels (1..K; 0 is background)."""

    def __init__(self, category_ids: Sequence[int]) -> None:
        self.category_ids = [int(c) for c in category_ids]
        self._to_label = {c: i + 1 for i, c in enumerate(self.category_ids)}

    def __len__(self) -> int:
        return len(self.category_ids)

    def to_labels(self, category_ids: np.ndarray) -> np.ndarray:
        try:
            return np.asarray([self._to_label[int(c)] for c in category_ids], np.int64)
        except KeyError as e:
            raise InputError("annotations", f"category id {e.args[0]} is not one of the model's classes") from None

    def to_category_ids(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(self.category_ids, np.int64)[np.asarray(labels, np.int64) - 1]


# ---------------------------------------------------------------- builders

def _pretrained_state(name: str, pretrained: bool | str) -> dict[str, torch.Tensor] | None:
    if pretrained is False:
        return None
    return create_imagenet_classifier(name, pretrained).network.state_dict()


def _resnet50_fpn(pretrained: bool | str, out_channels: int = 256,
                  norm_layer: Callable[[int], nn.Module] | None = None) -> tuple[nn.Module, tuple, tuple]:
    import torchvision

    if out_channels != 256 or norm_layer is not None:
        raise InputError("config", "model.fpn_channels / fpn_norm: resnet50_fpn is torchvision's FPN "
                                   "(256 channels, no normalisation)")
    resnet = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    state = _pretrained_state("resnet50", pretrained)
    if state is not None:
        resnet.load_state_dict(state)
    return _resnet_fpn_extractor(resnet, trainable_layers=3), IMAGENET_MEAN, IMAGENET_STD


def _lite0_fpn(pretrained: bool | str, out_channels: int = 256,
               norm_layer: Callable[[int], nn.Module] | None = None) -> tuple[nn.Module, tuple, tuple]:
    import timm
    from timm.layers import freeze_batch_norm_2d

    body = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=LITE0_STAGES,
                             pretrained=False)
    state = _pretrained_state("tf_efficientnet_lite0", pretrained)
    if state is not None:
        wanted = set(body.state_dict())
        body.load_state_dict({k: v for k, v in state.items() if k in wanted})
        # Batch statistics of 1-2 images per step are noise: keep ImageNet's, as Mask R-CNN does for
        # ResNet. A random-init body keeps live batch norm: frozen identity statistics would let its
        # activations grow unchecked through 16 blocks.
        body = freeze_batch_norm_2d(body)
    return _TimmFPN(body, out_channels, norm_layer), LITE_MEAN, LITE_STD


class _TimmFPN(nn.Module):
    """A timm ``features_only`` network under torchvision's FPN (the ``BackboneWithFPN`` contract)."""

    def __init__(self, body: nn.Module, out_channels: int = 256,
                 norm_layer: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool(),
                                         norm_layer=norm_layer)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn({str(i): f for i, f in enumerate(self.body(x))})


def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(32, channels)


def freeze_without_graph(module: nn.Module) -> None:
    """Freeze ``module`` and run its forward without building a graph (its activations need not be
    kept for a backward pass). The forward is wrapped on the instance, so parameter names -- and
    saved models -- are unchanged."""
    module.requires_grad_(False)
    module.forward = torch.no_grad()(module.forward)  # type: ignore[method-assign]


BUILDERS: dict[str, Callable[..., tuple[nn.Module, tuple, tuple]]] = {
    "resnet50_fpn": _resnet50_fpn,
    "lite0_fpn": _lite0_fpn,
}


def build_maskrcnn(cfg: DetectorConfig, num_classes: int, pretrained: bool | str | None = None, *,
                  data: DetectorDataConfig | None = None, test: DetectorTestConfig | None = None) -> MaskRCNN:
    """Mask R-CNN for ``num_classes`` object classes (plus background), resizing by ``data`` and
    post-processing by ``test`` (torchvision builds both into the model). ``pretrained`` overrides
    ``cfg.pretrained`` (a saved model is rebuilt without reading ImageNet weights)."""
    data = data if data is not None else DetectorDataConfig()
    test = test if test is not None else DetectorTestConfig()
    if cfg.backbone not in BUILDERS:
        raise InputError("config", f"unknown detector backbone {cfg.backbone!r}; choose one of {', '.join(BUILDERS)}")
    if cfg.fpn_norm not in ("none", "group"):
        raise InputError("config", f"model.fpn_norm must be 'none' or 'group', not {cfg.fpn_norm!r}")
    norm = _group_norm if cfg.fpn_norm == "group" else None
    backbone, mean, std = BUILDERS[cfg.backbone](cfg.pretrained if pretrained is None else pretrained,
                                                 cfg.fpn_channels, norm)
    if len(cfg.anchor_sizes) != 5:
        raise InputError("config", f"model.anchor_sizes needs one size per FPN level (5), got {cfg.anchor_sizes}")
    if not cfg.train_body:
        freeze_without_graph(backbone.body)
    anchors = AnchorGenerator(tuple((int(s),) for s in cfg.anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
    model = MaskRCNN(backbone, num_classes=num_classes + 1, min_size=data.min_size, max_size=data.max_size,
                    rpn_anchor_generator=anchors,
                    image_mean=list(mean), image_std=list(std), box_score_thresh=test.score_threshold,
                    box_detections_per_img=test.detections_per_image,
                    rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
                    rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
                    rpn_pre_nms_top_n_test=test.rpn_pre_nms_top_n_test,
                    rpn_post_nms_top_n_test=test.rpn_post_nms_top_n_test,
                    box_batch_size_per_image=cfg.box_batch_size_per_image)
    if cfg.mask_head_channels != 256:
        # built only when asked, so the default model's parameters (and their init order) are torchvision's
        width = cfg.mask_head_channels
        model.roi_heads.mask_head = MaskRCNNHeads(backbone.out_channels, (width,) * 4, 1)
        model.roi_heads.mask_predictor = MaskRCNNPredictor(width, width, num_classes + 1)
    if cfg.predictor_init == "detectron":
        init_predictors_detectron(model)
    return model


def init_predictors_detectron(model: MaskRCNN) -> None:
    """The output layers initialised as in Detectron / Mask R-CNN's reference code: class scores
    N(0, 0.01), box deltas N(0, 0.001), mask logits N(0, 0.001), biases 0. torchvision's kaiming
    init of the mask logits (std sqrt(2 / classes)) starts the mask loss at 5-14 on Lite0-FPN
    features, and its gradient then dominates the clipped gradient norm."""
    box = model.roi_heads.box_predictor
    mask_logits = model.roi_heads.mask_predictor.mask_fcn_logits
    for layer, std in ((box.cls_score, 0.01), (box.bbox_pred, 0.001), (mask_logits, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)


# ---------------------------------------------------------------- training data

InstancesFn = Callable[[ImageRecord, int], Instances]


def ground_truth_instances(record: ImageRecord, epoch: int = 0) -> Instances:
    """The record's non-crowd ground-truth instances (the fully supervised training signal)."""
    if record.gt is None or not record.gt.has_masks:
        raise InputError(record.path, "no ground-truth masks: the fully supervised reference trains on instance masks")
    return record.gt.select(~record.crowd)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1] (what torchvision detection models take)."""
    return torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)


def jitter_colour(x: torch.Tensor, rng: np.random.Generator, cfg: DetectorDataConfig) -> torch.Tensor:
    """Brightness, contrast and saturation scaled by factors drawn from ``rng``, in random order."""
    ops = [(TF.adjust_brightness, cfg.brightness), (TF.adjust_contrast, cfg.contrast),
           (TF.adjust_saturation, cfg.saturation)]
    factors = rng.uniform([1 - a for _, a in ops], [1 + a for _, a in ops])
    for i in rng.permutation(len(ops)):
        if ops[i][1] > 0:
            x = ops[i][0](x, float(factors[i]))
    return x.clamp_(0.0, 1.0)


def targets_from_instances(instances: Instances, labels: LabelMap, flip: bool) -> dict[str, torch.Tensor]:
    """Mask R-CNN targets (boxes xyxy, labels 1..K, uint8 masks) of one image, mirrored if ``flip``."""
    h, w = instances.image_size
    if len(instances):
        # An empty mask (a polygon that rasterises to nothing) has a zero box, which Mask R-CNN rejects.
        instances = instances.select(mask_ops.area(instances.rles()) > 0)
    if len(instances) == 0:
        return {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros((0, h, w), dtype=torch.uint8)}
    masks = torch.from_numpy(instances.mask_array().astype(np.uint8))
    boxes = torch.from_numpy(mask_ops.to_bbox(instances.rles()).astype(np.float32))
    if flip:
        masks = masks.flip(-1)
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return {"boxes": boxes, "labels": torch.from_numpy(labels.to_labels(instances.labels)), "masks": masks}


class InstanceDataset(Dataset):
    """(image tensor, targets) pairs for Mask R-CNN; the instances of an image may change per epoch.

    Images whose instances are empty (e.g. no peak found a proposal) are still used: Mask R-CNN
    learns background from them.
    """

    def __init__(self, records: Sequence[ImageRecord], instances_fn: InstancesFn, labels: LabelMap,
                 augment: DetectorDataConfig | None = None, seed: int = 0) -> None:
        self.records = list(records)
        self.instances_fn, self.labels = instances_fn, labels
        self.augment, self.seed = augment, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch: pseudo labels and augmentation depend on it."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record = self.records[index]
        x = image_to_tensor(load_image(record.path))
        instances = self.instances_fn(record, self.epoch)
        if tuple(instances.image_size) != tuple(x.shape[1:]):
            raise InputError(record.path, f"instances of size {instances.image_size} for an image of {tuple(x.shape[1:])}")
        flip = False
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            flip = self.augment.hflip and bool(rng.random() < 0.5)
            x = jitter_colour(x, rng, self.augment)
        if flip:
            x = x.flip(-1)
        return x, targets_from_instances(instances, self.labels, flip)


def collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Images of different sizes stay a list (Mask R-CNN batches them itself)."""
    return [b[0] for b in batch], [b[1] for b in batch]


def maskrcnn_step(model: nn.Module, batch: tuple[list[torch.Tensor], list[dict]]) -> tuple[torch.Tensor, dict]:
    """Trainer step: the sum of Mask R-CNN's losses (Eq. 2 of WISE: cls + box + mask, plus the RPN's),
    each logged under its own name."""
    images, targets = batch
    losses = model(images, targets)
    return sum(losses.values()), {k: v.detach() for k, v in losses.items()}


def detector_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                           weight_decay=weight_decay)


# ---------------------------------------------------------------- prediction

class StageTimer:
    """Seconds per inference stage, wall clock and this thread's CPU time. CPU time is what a
    comparison between two models on a shared machine should use: other processes' load stretches
    wall time (the same network on the same image took 1.5-12 s here depending on the load) but
    hardly the CPU time of a single-threaded run."""

    STAGES = ("transform", "backbone", "rpn", "box_head", "box_postprocess", "mask_head", "paste", "encode")

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._wall, self._cpu = time.perf_counter(), time.thread_time()

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.thread_time()

    def lap(self, stage: str) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        self.wall[stage] = self.wall.get(stage, 0.0) + wall - self._wall
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu - self._cpu
        self._wall, self._cpu = wall, cpu


def _lap(timer: StageTimer | None, stage: str) -> None:
    if timer is not None:
        timer.lap(stage)


@torch.no_grad()
def detect(model: MaskRCNN, x: torch.Tensor, timer: StageTimer | None = None) -> dict[str, torch.Tensor]:
    """``model([x])[0]`` in eval mode, stage by stage (what torchvision's GeneralizedRCNN and
    RoIHeads do at test time, nothing else), so each stage can be timed."""
    if timer is not None:
        timer.start()
    original_size = tuple(x.shape[-2:])
    images, _ = model.transform([x])
    _lap(timer, "transform")
    features = model.backbone(images.tensors)
    _lap(timer, "backbone")
    proposals, _ = model.rpn(images, features)
    _lap(timer, "rpn")
    heads = model.roi_heads
    box_features = heads.box_head(heads.box_roi_pool(features, proposals, images.image_sizes))
    class_logits, box_regression = heads.box_predictor(box_features)
    _lap(timer, "box_head")
    boxes, scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals, images.image_sizes)
    _lap(timer, "box_postprocess")
    mask_logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes, images.image_sizes)))
    mask_probs = maskrcnn_inference(mask_logits, labels)
    _lap(timer, "mask_head")
    result = [{"boxes": boxes[0], "labels": labels[0], "scores": scores[0], "masks": mask_probs[0]}]
    out = model.transform.postprocess(result, images.image_sizes, [original_size])[0]
    _lap(timer, "paste")
    if timer is not None:
        timer.counts["detections"] = timer.counts.get("detections", 0) + len(out["boxes"])
    return out


@torch.no_grad()
def predict_instances(model: MaskRCNN, image: np.ndarray, labels: LabelMap, device: torch.device,
                      mask_threshold: float = 0.5, timer: StageTimer | None = None) -> Instances:
    """One image -> Instances at its original resolution (masks = soft masks > ``mask_threshold``)."""
    model.eval()
    h, w = image.shape[:2]
    out = detect(model, image_to_tensor(image).to(device), timer)
    masks = (out["masks"][:, 0] > mask_threshold).cpu().numpy()
    keep = masks.any(axis=(1, 2))  # an all-empty mask is no instance
    found = Instances((h, w), boxes=out["boxes"].cpu().numpy()[keep],
                      labels=labels.to_category_ids(out["labels"].cpu().numpy()[keep]),
                      scores=out["scores"].cpu().numpy()[keep], masks=mask_ops.encode_many(masks[keep]))
    _lap(timer, "encode")
    return found
