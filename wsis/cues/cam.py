"""Class activation maps (Zhou et al., CVPR 2016) from a PRM classifier: an FCN whose last layer is
a 1x1 class conv computes CAM directly, so the CAM of class c is channel c of the raw CRM."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from wsis.cues.prm import PRMNet


def minmax_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Scale each (H, W) map of a (..., H, W) tensor to [0, 1]; a constant map becomes 0."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, 1.0), 0.0)


@torch.no_grad()
def class_activation_maps(model: PRMNet, images: torch.Tensor,
                          class_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """CAMs (B, K, H, W) in [0, 1] of ``images`` (B, 3, H, W), each min-max normalised.

    ``class_ids`` are channel indices of the model: (K,) for the same classes in every image, or
    (B, K) per image. The raw CRM is upsampled bilinearly to the image size before normalising.
    """
    ids = torch.as_tensor(class_ids, dtype=torch.long, device=images.device)
    if ids.ndim == 1:
        ids = ids.expand(images.shape[0], -1)
    if ids.ndim != 2 or ids.shape[0] != images.shape[0]:
        raise ValueError(f"class_ids must be (K,) or (B, K) with B={images.shape[0]}, got {tuple(ids.shape)}")
    was_training = model.training
    model.eval()
    try:
        crm = model.raw_crm(images)
    finally:
        model.train(was_training)
    picked = crm.gather(1, ids[:, :, None, None].expand(-1, -1, *crm.shape[-2:]))
    maps = F.interpolate(picked, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return minmax_normalise(maps)
