"""PDSL's segmentation branch (``papers/002``, section 3.3, Eq. 5) and instance-activation
correlation loss (section 3.4, Eqs. 6-8).

:class:`MaskHeads`: RoIAlign features -> 4 convolutions (3x3, 256 channels, ReLU) -> a 2x2 stride-2
deconvolution (ReLU) -> one 1x1 predictor per head: the class-agnostic head M^0 (1 channel) and
``n^m`` class-specific heads M^1..M^{n^m} (C channels each). The trunk is shared, as the paper
describes one module with several final prediction layers. Class-specific predictors are evaluated
only for the channel each RoI needs (its pseudo class in training, its detected class at test), one
einsum over all RoIs, instead of materialising n^m x C maps per RoI.

Eq. 5, with ``n`` the number of RoIs the mask branch sees:

* class-agnostic: ``sum_p BCE(M^0_p, Mhat^0_p) / n``, over every RoI, targets from the seed masks;
* class-specific: ``sum_p [t_p = c] y_c BCE(M^m_pc, M^{m-1}_pc) / n`` for m = 1..n^m (M^0 for
  m = 1), only for RoIs whose pseudo class ``t_p`` (from the last refinement head's assignment) is a
  tagged class, weighted by the WSDDN image score ``y_c`` of that class. Targets are the previous
  head's probabilities, detached (self-training: a head learns from the one before it, not the
  other way round); ``hard_targets`` binarises them at 0.5 instead.
* BCE is averaged over the mask's pixels (Mask R-CNN's L_mask) rather than summed as written, and
  the proposal sum divided by ``n``: the sums as written grow with the mask resolution and the
  number of proposals (784 x 2,000) and would swamp the detection terms.

Eqs. 7-8: ``a^m_p = (1/tau) log(mean_ij exp(tau M^m_{p t_p, ij}))`` on mask *probabilities*
(what the BCE of Eq. 5 treats as M), against the detection activation ``S^{n^r}_{p t_p}`` (the last
refinement head's softmax probability of the proposal's pseudo class);
``L^m_ACL = sum_p |a^m_p - ahat_p| / n`` (the 2-norm of a scalar difference), summed over the
class-specific heads m = 1..n^m (Eq. 6; with n^m = 0 there is no correlation term). Choices where
the paper is silent: background RoIs (t_p = 0) have no class channel and contribute 0; gradients
flow into both branches (the loss is meant to make each guide the other); with n^r = 0 the
detection activation is WSDDN's S^0 divided by its maximum over the image's proposals for that
class, because raw S^0 sums to at most 1 over thousands of proposals. ``loss.correlation_target:
relative`` divides S^{n^r} the same way (:func:`wsis.methods.pdsl.model.relative_to_best`), for schedules
too short for the refinement heads to become confident: the paper's raw score then holds every
class-specific mask under the 0.5 cut (``benchmarks/results/pdsl.md``).

Mask targets: the seed's GrabCut mask (original image resolution) is RoIAligned onto the RoI's box
in original coordinates and thresholded at 0.5 (Mask R-CNN's target projection); for a mirrored
training image the target is mirrored.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align


class MaskHeads(nn.Module):
    """RoI features (R, in_channels, S, S) -> class-agnostic and class-specific mask logits (2S x 2S)."""

    def __init__(self, in_channels: int, num_classes: int, class_heads: int = 4, channels: int = 256,
                 convs: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(convs):
            layers += [nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(inplace=True)]
            c = channels
        self.trunk = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.agnostic = nn.Conv2d(channels, 1, 1)
        # n^m stacked 1x1 predictors of C channels: weight (n^m, C, channels)
        self.specific_weight = nn.Parameter(torch.empty(class_heads, num_classes, channels))
        self.specific_bias = nn.Parameter(torch.zeros(class_heads, num_classes))
        for m in [*self.trunk, self.deconv]:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.agnostic.weight, std=0.001)
        nn.init.zeros_(self.agnostic.bias)
        nn.init.normal_(self.specific_weight, std=0.001)

    @property
    def class_heads(self) -> int:
        return self.specific_weight.shape[0]

    def forward(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the agnostic head (R, H, W) and of the class-specific heads for each RoI's
        0-based class ``classes`` (R,): (n^m, R, H, W)."""
        h = F.relu(self.deconv(self.trunk(x)))
        agnostic = self.agnostic(h)[:, 0]
        w = self.specific_weight[:, classes]                  # (n^m, R, channels)
        b = self.specific_bias[:, classes]                    # (n^m, R)
        specific = torch.einsum("mrk,rkhw->mrhw", w, h) + b[:, :, None, None]
        return agnostic, specific


# ---------------------------------------------------------------- targets and sampling

@torch.no_grad()
def mask_targets(seed_masks: torch.Tensor, source: torch.Tensor, boxes: torch.Tensor, size: int,
                 flip: bool = False) -> torch.Tensor:
    """(R, size, size) 0/1 targets: mask ``seed_masks[source[r]]`` ((S, H, W), original resolution)
    cut to ``boxes[r]`` (original xyxy coordinates), mirrored when ``flip``."""
    if len(boxes) == 0:
        return seed_masks.new_zeros(0, size, size)
    rois = torch.cat([source[:, None].to(boxes.dtype), boxes], dim=1)
    out = roi_align(seed_masks[:, None].float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=2,
                    aligned=True)[:, 0]
    out = (out >= 0.5).float()
    return out.flip(-1) if flip else out


def sample_mask_rois(foreground: torch.Tensor, num: int | None, fg_fraction: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Indices of the RoIs the mask branch sees in one image: all when ``num`` is None or at least
    their count; else ``num`` drawn without replacement, up to ``fg_fraction`` of them foreground
    (more when there are too few background RoIs), in ascending order."""
    p = len(foreground)
    if num is None or num >= p:
        return torch.arange(p)
    fg = torch.nonzero(foreground.cpu()).flatten()
    bg = torch.nonzero(~foreground.cpu()).flatten()
    n_fg = min(len(fg), max(int(round(num * fg_fraction)), num - len(bg)))
    n_bg = min(len(bg), num - n_fg)
    pick_fg = fg[torch.randperm(len(fg), generator=generator)[:n_fg]]
    pick_bg = bg[torch.randperm(len(bg), generator=generator)[:n_bg]]
    return torch.cat([pick_fg, pick_bg]).sort().values


# ---------------------------------------------------------------- Eq. 5

def segmentation_loss(agnostic: torch.Tensor, specific: torch.Tensor, targets: torch.Tensor,
                      fg_weights: torch.Tensor, hard_targets: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5 (see module docstring): ``agnostic`` (R, H, W) and ``specific`` (n^m, R, H, W) logits,
    ``targets`` (R, H, W) seed-mask targets, ``fg_weights`` (R,) = y_{t_p} for foreground RoIs and 0
    otherwise. Returns (class-agnostic term, class-specific terms summed over heads)."""
    n = max(len(targets), 1)
    first = F.binary_cross_entropy_with_logits(agnostic, targets, reduction="none").mean(dim=(1, 2)).sum() / n
    if specific.shape[0] == 0:
        return first, agnostic.new_zeros(())
    previous = torch.cat([agnostic[None], specific[:-1]]).sigmoid().detach()   # M^{m-1} for m = 1..n^m
    if hard_targets:
        previous = (previous >= 0.5).float()
    bce = F.binary_cross_entropy_with_logits(specific, previous, reduction="none").mean(dim=(2, 3))  # (n^m, R)
    return first, (bce * fg_weights[None]).sum() / n


# ---------------------------------------------------------------- Eqs. 6-8

def lse_activation(masks: torch.Tensor, tau: float = 5.0) -> torch.Tensor:
    """Eq. 7: ``(1/tau) log(mean exp(tau M))`` over the last two (spatial) dimensions."""
    h, w = masks.shape[-2:]
    return (torch.logsumexp(tau * masks.flatten(-2), dim=-1) - math.log(h * w)) / tau


def correlation_loss(specific: torch.Tensor, detection: torch.Tensor, foreground: torch.Tensor,
                     tau: float = 5.0) -> torch.Tensor:
    """Eqs. 6 + 8: ``specific`` (n^m, R, H, W) mask *probabilities* of each RoI's class, ``detection``
    (R,) the detection activation, ``foreground`` (R,) bool; sum over heads of
    ``sum_p |a^m_p - ahat_p| / R`` over foreground RoIs."""
    n = max(specific.shape[1], 1)
    if specific.shape[0] == 0:
        return detection.new_zeros(())
    a = lse_activation(specific, tau)                       # (n^m, R)
    diff = (a - detection[None]).abs() * foreground[None].to(a.dtype)
    return diff.sum() / n
