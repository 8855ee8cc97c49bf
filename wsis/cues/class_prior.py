"""ImageNet class prior: what the backbone's own 1000-way ImageNet classifier already says about a
dataset's classes, through a documented table of COCO classes -> ImageNet synsets
(``data/coco_imagenet_synsets.json``: dog <- the 118 breeds, sheep <- ram/bighorn, ...; every entry
says why, and 15 COCO classes have no fitting synset).

Two uses:

* :func:`imagenet_tag_scores` -- image-level class scores with no training at all: the ImageNet
  softmax summed over each class's synsets (a probability in [0, 1]).
* :func:`prior_class_layer` -- an initial PRM class layer (the 1x1 conv on the backbone features):
  for class ``c`` with synsets ``S``, ``w_c = mean_{k in S} w_k - mean_k w_k`` and likewise the bias,
  i.e. the mean ImageNet logit of ``c``'s synsets minus the mean logit of all 1000 classes (a linear
  stand-in for the log of the summed softmax, which is not linear in the features). Applied per pixel
  it gives ImageNet class response maps; applied to pooled features it ranks images like the ImageNet
  classifier. Classes without synsets get zeros (their layer learns from the tags alone).

Not in the PRM paper (its class layer starts random); it is a switch (``class_prior: imagenet|none``)
so that the paper configuration keeps the paper's behaviour.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
from torch import nn

from wsis.errors import InputError

SYNSET_FILE = "coco_imagenet_synsets.json"


@lru_cache(maxsize=1)
def synset_table() -> dict[str, list[int]]:
    """COCO class name -> ImageNet-1k class indices (possibly empty), from the packaged table."""
    text = resources.files("wsis.cues").joinpath("data", SYNSET_FILE).read_text()
    classes = json.loads(text)["classes"]
    return {name: [int(s["index"]) for s in entry["synsets"]] for name, entry in classes.items()}


def _coco_name(name: str) -> str:
    from wsis.eval.subsets import VOC_TO_COCO_NAME

    return VOC_TO_COCO_NAME.get(name, name)


def synsets_for(names: Sequence[str]) -> list[list[int]]:
    """ImageNet indices for each class name (COCO or VOC spelling; unknown names get [])."""
    table = synset_table()
    return [table.get(_coco_name(n), []) for n in names]


def has_prior(names: Sequence[str]) -> np.ndarray:
    """(C,) bool: which classes have at least one synset."""
    return np.array([len(s) > 0 for s in synsets_for(names)], dtype=bool)


def imagenet_tag_scores(imagenet_logits: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """(B, 1000) ImageNet logits -> (B, C) summed softmax over each class's synsets (0 without)."""
    if imagenet_logits.shape[-1] != 1000:
        raise ValueError(f"expected 1000 ImageNet logits, got shape {tuple(imagenet_logits.shape)}")
    probs = imagenet_logits.softmax(dim=-1)
    out = torch.zeros(probs.shape[0], len(names), dtype=probs.dtype, device=probs.device)
    for c, idx in enumerate(synsets_for(names)):
        if idx:
            out[:, c] = probs[:, idx].sum(dim=-1)
    return out


def prior_class_weights(head: nn.Linear, names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, F) weight and (C,) bias of the prior class layer (module docstring) from an ImageNet head."""
    if head.out_features != 1000:
        raise InputError("backbone", f"an ImageNet head has 1000 outputs, this one {head.out_features}")
    w, b = head.weight.detach().float(), head.bias.detach().float()
    w0, b0 = w.mean(dim=0), b.mean()
    weight = torch.zeros(len(names), w.shape[1])
    bias = torch.zeros(len(names))
    for c, idx in enumerate(synsets_for(names)):
        if idx:
            weight[c] = w[idx].mean(dim=0) - w0
            bias[c] = b[idx].mean() - b0
    return weight, bias


def init_class_layer(layer: nn.Conv2d, head: nn.Linear, names: Sequence[str]) -> np.ndarray:
    """Overwrite a (C, F, 1, 1) class conv with the prior for the classes that have synsets; the others
    keep their initialisation. Returns the (C,) bool mask of classes that got a prior."""
    if layer.kernel_size != (1, 1) or layer.out_channels != len(names):
        raise ValueError(f"expected a 1x1 conv with {len(names)} outputs, got {layer}")
    weight, bias = prior_class_weights(head, names)
    known = has_prior(names)
    with torch.no_grad():
        idx = torch.from_numpy(np.flatnonzero(known))
        layer.weight[idx] = weight[idx, :, None, None].to(layer.weight)
        if layer.bias is not None:
            layer.bias[idx] = bias[idx].to(layer.bias)
    return known


def class_names(category_ids: Sequence[int], categories: Mapping[int, str]) -> list[str]:
    """Names in the order of ``category_ids`` (the PRM class index order)."""
    return [categories[int(c)] for c in category_ids]
