"""Erasing of discriminative regions for multi-stage erasing refinement (MSER, Hu et al. 2021, Eqs. 2-3).

For the PRMs ``P_j`` of the M peaks of a training image at stage t::

    R_j(x, y)   = 0 if P_j(x, y) >= delta else 1                       (Eq. 2)
    I'(x, y)    = I(x, y) - I(x, y) * [1 - prod_j R_j(x, y)]            (Eq. 3)

so a pixel is erased when *any* peak's PRM reaches ``delta`` there (the union of the discriminative
regions). Algorithm 1 of the paper writes ``prod_j R_j`` without the ``1 -``, which would erase
everything *but* the discriminative regions; Section 3.2 (Eq. 3) and Fig. 2 show the union being
erased, which is what is implemented.

**The scale of delta.** The paper sets delta = 30 and gives no unit. A PRM here is normalised to
sum 1 (the PRM reference's normalisation), so its raw values depend on the image size and on how
spread the map is; 30 cannot be meant on that scale. We rescale each PRM so that its maximum is 255
-- the scale of an 8-bit map, which is how PRMs are saved and looked at -- and compare with delta
there: delta = 30 erases the pixels whose response is at least 30/255 = 11.8% of that peak's
maximum, a small discriminative core per peak, consistent with the paper's "we erase much fewer
regions in the image". ``scale="raw"`` compares delta with the maps as given instead.

**The value of an erased pixel.** Eq. 3 sets erased pixels to zero. The networks see normalised
images, and the value that carries no evidence for them is the normalised zero, i.e. the
normaliser's mean colour (ImageNet mean for ResNet-50, grey 0.5 for EfficientNet-Lite0); erasing
to black in RGB would instead paint a strong dark pattern whose edges the next network could learn
as a cue. ``fill="mean"`` (default) erases to the mean colour, ``fill="black"`` to RGB 0.

Masks are computed and stored at the classifier's input resolution (the square ``image_size`` the
PRMs live at) and applied after resizing, before flips; they are saved as packed bits in ``.npz``
files, written atomically, so erased images never exist on disk as copies.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsis.data.images import atomic_write
from wsis.errors import InputError

DeltaScale = Literal["max255", "raw"]
Fill = Literal["mean", "black"]


@dataclass
class ErasingConfig:
    """Eq. 2's threshold and its scale, and what an erased pixel becomes (module docstring)."""

    delta: float = 30.0
    scale: DeltaScale = "max255"
    fill: Fill = "mean"


def scale_prms(prms: torch.Tensor | np.ndarray, scale: DeltaScale) -> torch.Tensor:
    """(K, H, W) PRMs on the scale delta is compared with; a map that is zero everywhere stays zero."""
    prms = torch.as_tensor(prms, dtype=torch.float32)
    if scale == "raw":
        return prms
    if scale != "max255":
        raise ValueError(f"unknown delta scale {scale!r}; expected 'max255' or 'raw'")
    peak = prms.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return prms * (255.0 / peak)


def keep_maps(prms: torch.Tensor | np.ndarray, delta: float, scale: DeltaScale = "max255") -> torch.Tensor:
    """Eq. 2: (K, H, W) bool R_j, True (=1) where a pixel is kept, False where P_j >= delta."""
    return scale_prms(prms, scale) < delta


def erase_mask(prms: torch.Tensor | np.ndarray, delta: float, scale: DeltaScale = "max255") -> torch.Tensor:
    """(H, W) bool: ``1 - prod_j R_j``, the union over the peaks of the discriminative pixels."""
    prms = torch.as_tensor(prms)
    if prms.ndim != 3:
        raise ValueError(f"erase_mask expects (K, H, W) PRMs, got shape {tuple(prms.shape)}")
    if len(prms) == 0:
        return torch.zeros(prms.shape[1:], dtype=torch.bool)
    return ~keep_maps(prms, delta, scale).all(dim=0)


def fill_value(fill: Fill, mean: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """(3,) colour in [0, 1] an erased pixel takes before normalisation."""
    if fill == "mean":
        return torch.as_tensor(mean, dtype=torch.float32).flatten()
    if fill == "black":
        return torch.zeros(3)
    raise ValueError(f"unknown erase fill {fill!r}; expected 'mean' or 'black'")


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) bool mask resized by nearest neighbour to ``size``."""
    if tuple(mask.shape) == tuple(size):
        return mask
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5


def apply_erase(image: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Eq. 3 on a (3, H, W) image in [0, 1]: erased pixels take the colour ``fill`` (3,)."""
    mask = resize_mask(torch.as_tensor(mask, dtype=torch.bool), tuple(image.shape[-2:]))
    return torch.where(mask.to(image.device), fill.to(image)[:, None, None], image)


def save_mask(path: str | Path, mask: np.ndarray | torch.Tensor) -> None:
    """Write an (H, W) bool mask as packed bits (atomically)."""
    mask = np.asarray(torch.as_tensor(mask).cpu().numpy(), dtype=bool)
    with atomic_write(path, "wb") as f:
        np.savez_compressed(f, bits=np.packbits(mask.ravel()), shape=np.asarray(mask.shape, np.int64))


def load_mask(path: str | Path) -> np.ndarray:
    """The (H, W) bool mask written by :func:`save_mask`."""
    try:
        with np.load(path) as data:
            shape = tuple(int(s) for s in data["shape"])
            bits = np.unpackbits(data["bits"], count=int(np.prod(shape)))
    except (OSError, ValueError, KeyError) as e:
        raise InputError(path, f"cannot read erase mask ({e})") from None
    return bits.astype(bool).reshape(shape)


class EraseTransform:
    """``TagDataset`` image hook: erase image ``index`` with its stored mask (picklable for workers).

    ``mask_paths[index]`` is the image's mask file, or None for an image left as it is.
    """

    def __init__(self, mask_paths: Sequence[str | Path | None], fill: torch.Tensor) -> None:
        self.mask_paths = [None if p is None else str(p) for p in mask_paths]
        self.fill = torch.as_tensor(fill, dtype=torch.float32)

    def __call__(self, index: int, image: torch.Tensor) -> torch.Tensor:
        path = self.mask_paths[index]
        if path is None:
            return image
        return apply_erase(image, torch.from_numpy(load_mask(path)), self.fill)
