"""The PDSL network (``papers/002``, Fig. 2): backbone -> RoIPool -> detection branch
(:mod:`wsis.detectors.wsddn`) and RoIAlign -> segmentation branch (:mod:`wsis.methods.pdsl.masks`), and its
training loss ``L = L_OD + L_IS + L_CL`` (Eq. 1) computed inside ``forward`` so that
DistributedDataParallel sees one call per step.

Backbone adaptation of :func:`wsis.backbones.create_backbone`'s networks
(:func:`wsis.backbones.strided_backbone`, shared with Label-PEnet), and why:

* ``output_stride=16`` dilates the last stride-2 stage (ResNet-50's res5 as torchvision's
  ``replace_stride_with_dilation``; EfficientNet-Lite0 through timm's ``output_stride``): the paper's
  ResNet-WS backbones are not available, and stride-32 RoIs of small objects are a cell or two.
* batch norm is frozen (ImageNet statistics) when the backbone is pretrained: one image per process
  gives no usable batch statistics (a random-init backbone, in tests, keeps live batch norm);
* the first ``frozen_stages`` stages are not trained (the paper is silent; Detectron's default).

One training step, per image of the batch (Python loops over images and heads only, never over
proposals):

1. WSDDN scores and Eq. 2;
2. head r's pseudo labels from head r-1's foreground probabilities (S^0 for r = 1), Eq. 3;
3. the last head's pseudo labels (from S^0 when n^r = 0) give each proposal's class t_p and the top
   proposal per tagged class, from which the seeds are acquired (:mod:`wsis.methods.pdsl.seeds`); the
   seeds' GrabCut masks come from the ``seed_masks(image_path, boxes)`` argument of ``forward``
   (the method passes its on-disk GrabCut cache);
4. the mask branch runs on ``loss.mask_rois`` RoIs drawn from (seed, epoch, image) only
   (:func:`~wsis.methods.pdsl.masks.sample_mask_rois`), Eq. 5 and Eqs. 6-8 on them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align, roi_pool

from wsis.backbones import Backbone, strided_backbone
from wsis.detectors.wsddn import (PseudoLabels, WSDDNHead, inference_scores, mil_loss, oicr_pseudo_labels,
                                  refinement_loss, wsddn_scores)
from wsis.engine.trainer import derive_seed
from wsis.errors import InputError
from wsis.methods.pdsl.config import PDSLLossConfig, PDSLModelConfig
from wsis.methods.pdsl.masks import (MaskHeads, correlation_loss, mask_targets, sample_mask_rois, segmentation_loss)
from wsis.methods.pdsl.seeds import assign_seeds

# (image path, (S, 4) xyxy boxes in original image coordinates) -> (S, H, W) bool masks
SeedMaskFn = Callable[[str, np.ndarray], np.ndarray]


# ---------------------------------------------------------------- backbone adaptation

def pdsl_backbone(cfg: PDSLModelConfig, pretrained: bool | str | None = None) -> Backbone:
    """:func:`wsis.backbones.strided_backbone` with PDSL's model settings (module docstring)."""
    weights = cfg.pretrained if pretrained is None else pretrained
    return strided_backbone(cfg.backbone, weights, cfg.output_stride, cfg.frozen_stages,
                            freeze_batch_norm=cfg.pretrained is not False)


# ---------------------------------------------------------------- the network

class PDSLNet(nn.Module):
    """Backbone, detection branch and segmentation branch; ``forward(batch, seed_masks)`` returns the losses."""

    def __init__(self, backbone: Backbone, num_classes: int, cfg: PDSLModelConfig,
                 loss: PDSLLossConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.cfg, self.loss_cfg, self.seed = cfg, loss or PDSLLossConfig(), seed
        self.num_classes = num_classes
        channels = backbone.out_channels
        if cfg.reduce_channels:
            self.reduce: nn.Module = nn.Sequential(nn.Conv2d(channels, cfg.reduce_channels, 1), nn.ReLU(inplace=True))
            channels = cfg.reduce_channels
        else:
            self.reduce = nn.Identity()
        self.detector = WSDDNHead(channels * cfg.roi_size ** 2, num_classes, cfg.hidden, cfg.dropout,
                                  cfg.refine_heads, cfg.box_regression)
        self.masker = MaskHeads(channels, num_classes, cfg.mask_heads, cfg.mask_channels, cfg.mask_convs)

    # -- shared stages ---------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.backbone(images))

    @staticmethod
    def rois(boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 5) RoIs [image, x0, y0, x1, y1] and (N,) segments from per-image (P_i, 4) boxes."""
        segments = torch.cat([torch.full((len(b),), i, dtype=torch.long, device=b.device) for i, b in enumerate(boxes)])
        return torch.cat([segments[:, None].to(boxes[0].dtype), torch.cat(boxes)], dim=1), segments

    def detect(self, feats: torch.Tensor, rois: torch.Tensor) -> dict:
        pooled = roi_pool(feats, rois, self.cfg.roi_size, 1.0 / self.backbone.stride)
        return self.detector(pooled)

    def mask_logits(self, feats: torch.Tensor, rois: torch.Tensor, classes: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = roi_align(feats, rois, self.cfg.mask_roi_size, 1.0 / self.backbone.stride, sampling_ratio=2, aligned=True)
        return self.masker(x, classes)

    @torch.no_grad()
    def infer(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Features, test scores (N, C) and mean deltas (N, 4 C) or None, for proposals ``boxes``."""
        feats = self.features(images)
        rois, segments = self.rois(boxes)
        scores, deltas = inference_scores(self.detect(feats, rois), segments, len(boxes))
        return feats, scores, deltas

    # -- training ------------------------------------------------------------------------------
    def forward(self, batch: dict, seed_masks: SeedMaskFn) -> dict[str, torch.Tensor]:
        """Eq. 1's terms for a collated batch; ``seed_masks(image_path, boxes)`` gives the GrabCut masks
        of the seeds, which are chosen here from the detection branch's own scores."""
        images, boxes, labels = batch["images"], batch["boxes"], batch["labels"]
        num_images = len(boxes)
        feats = self.features(images)
        rois, segments = self.rois(boxes)
        out = self.detect(feats, rois)
        s0, y = wsddn_scores(out["cls"], out["det"], segments, num_images)
        losses = {"mil": mil_loss(y, labels)}

        # Eq. 3: head r learns from head r-1's scores (S^0 for the first)
        previous = s0.detach()
        refine_cls, refine_box = s0.new_zeros(()), s0.new_zeros(())
        last: list[PseudoLabels] = []
        heads = len(out["refine"])
        for r in range(max(heads, 1)):
            targets = [self._pseudo(b, previous[segments == i], labels[i]) for i, b in enumerate(boxes)]
            if heads == 0:
                last = targets
                break
            logits, deltas = out["refine"][r], (out["deltas"][r] if out["deltas"] else None)
            for i, t in enumerate(targets):
                sel = segments == i
                c, b = refinement_loss(logits[sel], None if deltas is None else deltas[sel], boxes[i], t)
                refine_cls, refine_box = refine_cls + c, refine_box + b
            if r == heads - 1:
                last = targets
            previous = logits.detach().softmax(dim=1)[:, 1:]
        if heads:
            losses["refine_cls"] = refine_cls / num_images
            if out["deltas"]:
                losses["refine_box"] = refine_box / num_images

        # detection activation of Eq. 8 for each proposal's pseudo class (column 0: background)
        if not (self.loss_cfg.correlation and self.masker.class_heads):
            final = None  # no correlation term
        elif heads and self.loss_cfg.correlation_target == "score":
            final = out["refine"][-1].softmax(dim=1)
        else:  # relative to the class's best proposal in the image (see masks.py); S^0 when n^r = 0
            scores = out["refine"][-1].softmax(dim=1)[:, 1:] if heads else s0
            final = torch.cat([scores.new_zeros(len(scores), 1),
                               relative_to_best(scores, segments, num_images)], dim=1)
        losses.update(self._mask_losses(batch, seed_masks, feats, boxes, segments, last, y.detach(), final))
        return losses

    def _pseudo(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> PseudoLabels:
        return oicr_pseudo_labels(boxes, scores, labels, self.loss_cfg.fg_iou, self.loss_cfg.ignore_iou)

    def _mask_losses(self, batch: dict, seed_masks: SeedMaskFn, feats: torch.Tensor, boxes: list[torch.Tensor],
                     segments: torch.Tensor, last: list[PseudoLabels], y: torch.Tensor, final: torch.Tensor | None
                     ) -> dict[str, torch.Tensor]:
        lc = self.loss_cfg
        size = 2 * self.cfg.mask_roi_size
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("rois", "classes", "targets", "weights", "fg", "det")}
        offset = 0
        for i, target in enumerate(last):
            p = len(boxes[i])
            assignment = assign_seeds(boxes[i], target.top, lc.n_seed)
            if len(assignment.seeds) == 0:
                offset += p
                continue
            index, epoch = int(batch["index"][i]), int(batch["epoch"][i])
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index, 7))
            sel = sample_mask_rois(target.foreground, lc.mask_rois, lc.mask_fg_fraction, g).to(boxes[i].device)
            used, source = torch.unique(assignment.source[sel], return_inverse=True)
            seed_boxes = batch["source_boxes"][i][assignment.seeds[used]]
            masks = torch.from_numpy(seed_masks(batch["path"][i], seed_boxes.detach().cpu().numpy())).to(feats.device)
            parts["targets"].append(mask_targets(masks, source, batch["orig_boxes"][i][sel], size,
                                                 bool(batch["flip"][i])))
            labels = target.labels[sel]
            fg = labels > 0
            classes = (labels - 1).clamp_min(0)
            parts["rois"].append(torch.cat([torch.full((len(sel), 1), float(i), device=feats.device,
                                                       dtype=boxes[i].dtype), boxes[i][sel]], dim=1))
            parts["classes"].append(classes)
            parts["fg"].append(fg)
            parts["weights"].append(torch.where(fg, y[i, classes], torch.zeros_like(y[i, classes])))
            if final is not None:
                parts["det"].append(final[offset + sel, labels])
            offset += p
        names = ["mask_agnostic"] + (["mask_specific"] if self.masker.class_heads else [])
        names += ["correlation"] if lc.correlation and self.masker.class_heads else []
        if not parts["rois"]:  # no image of the batch is tagged: nothing to segment
            return {k: feats.new_zeros(()) for k in names}
        cat = {k: torch.cat(v) for k, v in parts.items() if v}  # no "det" without a correlation term
        agnostic, specific = self.mask_logits(feats, cat["rois"], cat["classes"])
        first, rest = segmentation_loss(agnostic, specific, cat["targets"], cat["weights"], lc.hard_mask_targets)
        out = {"mask_agnostic": first}
        if self.masker.class_heads:
            out["mask_specific"] = rest
            if lc.correlation:
                out["correlation"] = correlation_loss(specific.sigmoid(), cat["det"], cat["fg"], lc.tau)
        return out


def relative_to_best(scores: torch.Tensor, segments: torch.Tensor, num_images: int) -> torch.Tensor:
    """(N, C) proposal scores divided by the (detached) maximum of each class over its image's
    proposals: the best proposal of each class has activation 1."""
    top = scores.new_zeros(num_images, scores.shape[1]).scatter_reduce(
        0, segments[:, None].expand_as(scores), scores.detach(), "amax", include_self=True)
    return scores / top[segments].clamp_min(1e-12)


def build_pdsl(cfg: PDSLModelConfig, num_classes: int, loss: PDSLLossConfig | None = None, seed: int = 0,
               pretrained: bool | str | None = None) -> PDSLNet:
    """The network for ``num_classes`` classes; ``pretrained`` overrides ``cfg.pretrained`` (a saved
    model is rebuilt without reading ImageNet weights)."""
    if cfg.refine_heads < 0 or cfg.mask_heads < 0:
        raise InputError("model", f"refine_heads and mask_heads must be >= 0, got {cfg.refine_heads}, {cfg.mask_heads}")
    return PDSLNet(pdsl_backbone(cfg, pretrained), num_classes, cfg, loss, seed)


def pad_images(images: list[torch.Tensor], divisor: int = 32) -> torch.Tensor:
    """(3, H_i, W_i) tensors -> one (B, 3, H, W) batch, zero-padded at the bottom/right."""
    h = -(-max(x.shape[1] for x in images) // divisor) * divisor
    w = -(-max(x.shape[2] for x in images) // divisor) * divisor
    return torch.stack([F.pad(x, (0, w - x.shape[2], 0, h - x.shape[1])) for x in images])
