"""Forward-backward learning with curriculum (``papers/001``, 3.3 and 4.2).

The two phases alternate per iteration (even iterations forward, odd backward; a
:class:`PhaseHook` reads the trainer's step, so a resumed run continues the alternation):

* forward curriculum phase: every module takes a step on the supervision the module before it
  left on disk in cascaded pre-training (classification: the tags; detection: S^1/B^1/W^1;
  refinement: S^2/T^2/W^2; segmentation: the refinement module's calibrated masks);
* backward validation phase, in inverse order: the segmentation module only infers, and its
  detections of the tagged classes (score >= ``curriculum.detection_threshold``; weight = score)
  supervise the refinement module; the refinement module's detections supervise the detection
  module; the detection module's label the classification module's proposals -- IoU > beta with
  a detected object: its class, else background (:func:`proposal_labels`) -- for the single-label
  loss beside the multi-label one.

All losses of an iteration go into one backward pass and one SGD step over every trainable
parameter (the backbone too when ``model.train_backbone_curriculum``: "all layers ... trained end to
end"). The backward phase's detections are made at the sample's own scale and flip, with the
network in eval mode and without gradient (a module is not trained through its own labels).
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

from wsis.engine import HookBase
from wsis.methods.labelpenet.config import LabelPENetConfig
from wsis.methods.labelpenet.inference import evaluating
from wsis.methods.labelpenet.model import LabelPENet


def proposal_labels(proposals: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """(P,) single-label targets: 1 + the 0-based class of the detected object a proposal overlaps
    most if that IoU is > ``beta``, else 0 (background)."""
    if len(boxes) == 0 or len(proposals) == 0:
        return torch.zeros(len(proposals), dtype=torch.long, device=proposals.device)
    best, which = box_iou(proposals, boxes.to(proposals)).max(dim=1)
    return torch.where(best > beta, labels.to(proposals.device)[which] + 1, torch.zeros_like(which))


class PhaseHook(HookBase):
    """Tells the step function the trainer's iteration (its parity is the phase)."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def before_step(self, trainer) -> None:
        self.state["step"] = trainer.global_step


@torch.no_grad()
def detected(module: torch.nn.Module, images: list[torch.Tensor], tags: list[torch.Tensor], threshold: float,
             with_masks: bool) -> list[dict[str, torch.Tensor]]:
    """``module``'s detections of the tagged classes scoring >= ``threshold``, as torchvision targets
    (labels 1..C, weights = scores, masks thresholded at 0.5)."""
    with evaluating(module):
        outs = module(images)
    targets = []
    for out, t, x in zip(outs, tags, images):
        keep = (out["scores"] >= threshold) & (t[(out["labels"] - 1).clamp(min=0)] > 0)
        target = {"boxes": out["boxes"][keep], "labels": out["labels"][keep], "weights": out["scores"][keep]}
        if with_masks:
            masks = out["masks"][keep][:, 0] if "masks" in out else torch.zeros((0,) + tuple(x.shape[-2:]))
            target["masks"] = (masks >= 0.5).to(torch.uint8)
        targets.append(target)
    return targets


def curriculum_losses(net: LabelPENet, batch: list[dict], phase: int, cfg: LabelPENetConfig) -> dict[str, torch.Tensor]:
    """One iteration's losses: phase 0 forward curriculum, phase 1 backward validation."""
    losses: dict[str, torch.Tensor] = {}
    if phase == 0:
        for module in ("classification", "detection", "refinement", "segmentation"):
            part = net([{**s, "target": s["targets"].get(module)} for s in batch], module)
            losses.update({f"fw_{module}_{k}": v for k, v in part.items()})
        return losses
    images, tags = [s["image"] for s in batch], [s["tags"] for s in batch]
    thr = cfg.curriculum.detection_threshold
    from_seg = detected(net.segmentation, images, tags, thr, with_masks=True)
    part = net([{**s, "target": t} for s, t in zip(batch, from_seg)], "refinement")
    losses.update({f"bw_refinement_{k}": v for k, v in part.items()})
    from_ref = detected(net.refinement, images, tags, thr, with_masks=False)
    part = net([{**s, "target": t} for s, t in zip(batch, from_ref)], "detection")
    losses.update({f"bw_detection_{k}": v for k, v in part.items()})
    from_det = detected(net.detection, images, tags, thr, with_masks=False)
    labelled = [{**s, "proposal_labels": proposal_labels(s["proposals"], t["boxes"], t["labels"] - 1,
                                                         cfg.curriculum.beta)} for s, t in zip(batch, from_det)]
    part = net(labelled, "classification")
    losses["bw_classification_loss_multilabel"] = part["loss_multilabel"]
    losses["bw_classification_loss_single_label"] = cfg.curriculum.single_label_weight * part["loss_single_label"]
    return losses


def unfreeze_backbone(net: LabelPENet) -> None:
    """Every backbone parameter trainable (batch norm keeps its frozen statistics)."""
    for p in net.backbone.parameters():
        p.requires_grad_(True)


def phase_of(step: int) -> int:
    return int(np.int64(step) % 2)
