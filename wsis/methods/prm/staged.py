"""Fine-tuning PRM with the first backbone stages frozen and their output cached (``model.frozen_stages``).

Not in the PRM paper, which fine-tunes every layer (``prm.yaml`` keeps ``frozen_stages: 0``). On a CPU
the stem and the first stages cost most of a training step: they run at the highest resolutions,
forward and backward (`benchmarks/results/speed.md`, section "Training"). Freezing them (eval-mode
batch norm, no gradient, as detectron2's ``FREEZE_AT``) makes their output a function of the image
and its flip only, so it is computed once per image and flip and cached on disk
(:class:`~wsis.engine.feature_cache.FeatureCache`, keyed by image content, the frozen weights, the
input size and the flip); each step then runs only the trainable stages, the class layer and peak
stimulation. What changes against full fine-tuning: the frozen stages keep their ImageNet weights and
statistics, and the cached activations are stored in float16 (relative error ~5e-4).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from wsis.backbones import split_stages
from wsis.cues.prm import PRMNet, peak_stimulation
from wsis.data.torch_data import TagDataset, flip_decision
from wsis.engine.feature_cache import FeatureCache


class _FrozenPrefix(nn.Module):
    """The frozen stages as a feature extractor of their own (a copy: the training loop's
    ``model.train()`` never reaches its batch norm), named for the cache."""

    def __init__(self, model: PRMNet, stages: int) -> None:
        super().__init__()
        prefix, _ = split_stages(model.backbone, stages)
        self.prefix = copy.deepcopy(prefix).eval()
        self.name = f"{model.backbone.name}-stages{stages}"
        self.normalize = model.backbone.normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.prefix(images)


class PrefixFeatureDataset(Dataset):
    """``(frozen-stage features, target)`` for the images of a :class:`TagDataset`, with its flips
    (the same per-epoch decisions), read from or written to ``cache``."""

    def __init__(self, tags: TagDataset, cache: FeatureCache) -> None:
        if tags.image_transform is not None:
            raise ValueError("cached frozen stages need the images as they are on disk (no image_transform)")
        self.tags, self.cache = tags, cache

    def set_epoch(self, epoch: int) -> None:
        self.tags.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.tags)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tags
        flip = bool(t.train and flip_decision(t.seed, t.epoch, index))
        return self.cache.get(t.records[index].path, flip), t.targets[index]


def freeze_stages(model: PRMNet, stages: int) -> nn.Module:
    """Freeze the stem and the first ``stages`` stages of ``model``'s backbone; returns the trainable
    rest (``rest(frozen_features)`` is the backbone's output)."""
    prefix, rest = split_stages(model.backbone, stages)
    for p in prefix.parameters():
        p.requires_grad_(False)
    return rest


class StagedPRM(nn.Module):
    """The training model: frozen-stage features -> the trainable stages -> class scores. It holds the
    PRM network (whose parameters it trains) so that a DDP wrapper's forward sees every step."""

    def __init__(self, model: PRMNet, stages: int) -> None:
        super().__init__()
        self.model = model
        self.__dict__["rest"] = freeze_stages(model, stages)  # modules of self.model, not registered twice

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        crm = self.model.crm_from_features(self.rest(features))
        return peak_stimulation(crm, self.model.win_size, self.model.peak_filter)


def staged_training(model: PRMNet, tags: TagDataset, stages: int, cache_dir: Path,
                    device: str | torch.device = "cpu") -> tuple[StagedPRM, PrefixFeatureDataset]:
    """The training model and dataset of fine-tuning ``model`` with ``stages`` frozen stages."""
    cache = FeatureCache(cache_dir, _FrozenPrefix(model, stages), tags.image_size, device=device)
    # Filled here, in this process: data-loader workers then only read files (a forked worker must not
    # run the network on CUDA), and a resumed run finds everything on disk.
    for record in tags.records:
        for flip in (False, True) if tags.train else (False,):
            cache.get(record.path, flip)
    return StagedPRM(model, stages), PrefixFeatureDataset(tags, cache)
