"""Label-PEnet's four modules on one shared backbone (``papers/001``, 3.2 and 4.1) and their losses.

* Backbone: :func:`wsis.backbones.strided_backbone` (a toolkit backbone at stride 16, batch
  norm frozen, ``frozen_stages`` stages fixed), shared by all modules and fixed during cascaded
  pre-training (4.2). VGG-16's conv1-conv4 + dilated conv5 (stride 8) is the paper's; its weights
  are not available here, so EfficientNet-Lite0 (packaged ImageNet weights) at stride 16 stands in.
* :class:`ClassificationModule`: RoI pooling (7 x 7) of the proposals, fc6/fc7, the classification
  branch x^c and the proposal-weight branch x^p (:class:`wsis.detectors.wsddn.WSDDNHead`'s two
  streams), Eq. 1 (softmax over proposals) and Eq. 2 (:func:`classification_scores`,
  :func:`multilabel_loss`); its one refinement head is the (C + 1)-way single-label classifier of
  the backward validation phase (3.3, :func:`single_label_loss`).
* Detection module: torchvision's Faster R-CNN on the stride-16 level (one level, k = 9 anchors of
  3 sizes x 3 ratios; RoIAlign 7 x 7, fc6/fc7) with the weighted losses of Eqs. 3-4
  (:class:`WeightedRPN`, :class:`WeightedRoIHeads`).
* Refinement and segmentation modules: the same detection part plus a mask branch: an ASPP
  (DeepLab v3, dilations 1, 2, 4, 6; :class:`ASPP`) on the stride-16 features, RoIAlign 14 x 14 on
  its output, Mask R-CNN's mask head and per-class mask logits; the mask loss carries the
  instance weights too. The paper's RPN/RoI level for these modules is VGG's pool4 (stride 16) and
  the ASPP sits after relu5_3 (stride 8); here both read the one stride-16 map.

Eq. 3's objectness term is written ``L_obj(w_i, w_i^*)``; here every sampled anchor (positive or
negative) carries the weight of its ground truth, as Eq. 4 has for the RoIs and as "each proposal
sampled has a same weight with the corresponding ground truth" says -- for a foreground sample the one
it was matched to, for a background sample the one it overlaps most (:func:`sample_weights`); targets
stay the 0/1 labels. Both sums are divided by the number of sampled anchors / RoIs (Faster R-CNN's
normalisation): with unit weights they are torchvision's losses exactly (tested).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, project_masks_on_boxes
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, roi_pool
from torchvision.ops import boxes as box_ops

from wsis.backbones import Backbone, strided_backbone
from wsis.detectors.wsddn import WSDDNHead, segment_softmax, segment_sum
from wsis.methods.labelpenet.config import LabelPENetModelConfig


# ---------------------------------------------------------------- Eqs. 1-2

def classification_scores(xc: torch.Tensor, xp: torch.Tensor, segments: torch.Tensor,
                          num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 and the sum over proposals: ``w^p = softmax_proposals(x^p)``, proposal scores
    ``x^1 = x^c * w^p`` (N, C) and image scores ``s^1`` (B, C)."""
    x1 = xc * segment_softmax(xp, segments, num_images)
    return x1, segment_sum(x1, segments, num_images)


def multilabel_loss(image_scores: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``-sum_k y^k log softmax(s^1)_k``, averaged over the images of the batch, with ``y``
    normalised to sum 1 over the image's labels (the softmax cross-entropy of multi-label
    classification the paper's softmax over classes implies: a target distribution over classes).
    Unnormalised 0/1 tags scale an image's gradient with its label count and, measured on 8 scenes
    at lr 0.005, made fc6's gradient norm grow from 8 to 3e5 within 30 steps (then NaN)."""
    y = tags.to(image_scores.dtype)
    y = y / y.sum(dim=1, keepdim=True).clamp(min=1.0)
    return -(y * image_scores.log_softmax(dim=1)).sum(dim=1).mean()


def single_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The backward phase's single-label classification of the proposals (3.3): (C + 1)-way
    cross-entropy, labels 0 = background, averaged over proposals."""
    if len(labels) == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels)


class ClassificationModule(nn.Module):
    """RoI-pooled backbone features of the proposals -> x^c, x^p and the single-label logits."""

    def __init__(self, channels: int, num_classes: int, cfg: LabelPENetModelConfig, stride: int) -> None:
        super().__init__()
        self.roi_size, self.stride = cfg.roi_size, stride
        self.head = WSDDNHead(channels * cfg.roi_size ** 2, num_classes, cfg.hidden, cfg.dropout, refine_heads=1,
                              box_regression=False)

    def pool(self, features: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        """(N, D, 7, 7) RoI pooling of every image's boxes (in its input pixels) on its features."""
        return torch.cat([roi_pool(f, [b], self.roi_size, 1.0 / self.stride) for f, b in zip(features, boxes)])

    def forward(self, pooled: torch.Tensor) -> dict[str, Any]:
        out = self.head(pooled)
        return {"xc": out["cls"], "xp": out["det"], "single": out["refine"][0]}

    def class_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """x^c alone (the output Excitation BP starts from)."""
        return self.head.cls_stream(self.head.fc(pooled.flatten(1)))


# ---------------------------------------------------------------- Eqs. 3-4

def sample_weights(targets: list[dict[str, torch.Tensor]], matched: list[torch.Tensor],
                   nearest: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each sampled anchor / RoI's weight: that of the ground truth it was matched to (``matched`` >= 0),
    and for a background sample, which no ground truth claims, that of the ground truth it overlaps most
    (``nearest``: the argmax of its IoU row) -- the one whose threshold made it background; 1 in an
    image without ground truth."""
    out = []
    for t, m, n in zip(targets, matched, nearest):
        w = t.get("weights")
        if w is None or len(w) == 0:
            out.append(torch.ones(len(m), device=m.device))
        else:
            out.append(w.to(torch.float32)[torch.where(m >= 0, m, n)])
    return out


def weighted_rpn_loss(objectness: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor,
                      regression_targets: torch.Tensor, weights: torch.Tensor, sampled_pos: torch.Tensor,
                      sampled_neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 over the sampled anchors (flat indices ``sampled_pos`` / ``sampled_neg``)."""
    sampled = torch.cat([sampled_pos, sampled_neg])
    n = max(sampled.numel(), 1)
    bce = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled], reduction="none")
    obj = (weights[sampled] * bce).sum() / n
    reg = F.smooth_l1_loss(deltas[sampled_pos], regression_targets[sampled_pos], beta=1 / 9, reduction="none").sum(dim=1)
    return obj, (weights[sampled_pos] * reg).sum() / n


def weighted_rcnn_loss(class_logits: torch.Tensor, box_regression: torch.Tensor, labels: torch.Tensor,
                       regression_targets: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 over the sampled RoIs: weighted (C + 1)-way cross-entropy and class-specific box
    regression of the foreground RoIs, both divided by the number of RoIs."""
    n = max(labels.numel(), 1)
    cls = (weights * F.cross_entropy(class_logits, labels, reduction="none")).sum() / n
    pos = torch.where(labels > 0)[0]
    deltas = box_regression.reshape(len(labels), -1, 4)[pos, labels[pos]]
    reg = F.smooth_l1_loss(deltas, regression_targets[pos], beta=1 / 9, reduction="none").sum(dim=1)
    return cls, (weights[pos] * reg).sum() / n


def weighted_mask_loss(mask_logits: torch.Tensor, proposals: list[torch.Tensor], gt_masks: list[torch.Tensor],
                       gt_labels: list[torch.Tensor], matched: list[torch.Tensor],
                       weights: list[torch.Tensor]) -> torch.Tensor:
    """Mask R-CNN's per-pixel BCE of the foreground RoIs, each RoI's mean weighted by its instance weight."""
    size = mask_logits.shape[-1]
    labels = torch.cat([lab[m] for lab, m in zip(gt_labels, matched)])
    if labels.numel() == 0:
        return mask_logits.sum() * 0.0
    targets = torch.cat([project_masks_on_boxes(g, p, m, size) for g, p, m in zip(gt_masks, proposals, matched)])
    logits = mask_logits[torch.arange(len(labels), device=labels.device), labels]
    per_roi = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=(1, 2))
    return (torch.cat(weights) * per_roi).sum() / len(labels)


class WeightedRPN(RegionProposalNetwork):
    """torchvision's RPN on the levels named in ``levels`` with the loss of Eq. 3."""

    levels: tuple[str, ...] = ("0",)

    def forward(self, images, features, targets=None):
        return super().forward(images, OrderedDict((k, features[k]) for k in self.levels), targets)

    def assign_targets_to_anchors(self, anchors, targets):
        labels, matched_boxes, matched_all, nearest_all = [], [], [], []
        for anchors_i, t in zip(anchors, targets):
            gt = t["boxes"]
            if gt.numel() == 0:
                matched = torch.zeros(len(anchors_i), dtype=torch.long, device=anchors_i.device)
                labels.append(torch.zeros(len(anchors_i), device=anchors_i.device))
                matched_boxes.append(torch.zeros_like(anchors_i))
                matched_all.append(matched)
                nearest_all.append(matched)
                continue
            similarity = self.box_similarity(gt, anchors_i)
            matched = self.proposal_matcher(similarity)
            nearest_all.append(similarity.argmax(dim=0))
            lab = (matched >= 0).to(torch.float32)
            lab[matched == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0.0
            lab[matched == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(lab)
            matched_boxes.append(gt[matched.clamp(min=0)])
            matched_all.append(matched)
        self._weights = torch.cat(sample_weights(targets, matched_all, nearest_all))
        return labels, matched_boxes

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        neg = torch.where(torch.cat(neg))[0]
        return weighted_rpn_loss(objectness.flatten(), pred_bbox_deltas, torch.cat(labels),
                                 torch.cat(regression_targets), self._weights, pos, neg)


class WeightedRoIHeads(RoIHeads):
    """torchvision's RoI heads whose training losses are Eq. 4 (and the weighted mask loss)."""

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, matched, labels, regression_targets = self.select_training_samples(proposals, targets)
        # torchvision clamps a background RoI's match to ground truth 0: mark it unmatched (-1) by its label
        matched = [torch.where(lab > 0, m, -1) for m, lab in zip(matched, labels)]
        nearest = [box_ops.box_iou(t["boxes"], p).argmax(dim=0) if len(t["boxes"]) else torch.zeros_like(m)
                   for t, p, m in zip(targets, proposals, matched)]
        weights = sample_weights(targets, matched, nearest)
        x = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(x)
        cls, reg = weighted_rcnn_loss(class_logits, box_regression, torch.cat(labels), torch.cat(regression_targets),
                                      torch.cat(weights))
        losses = {"loss_classifier": cls, "loss_box_reg": reg}
        if self.has_mask():
            pos = [torch.where(lab > 0)[0] for lab in labels]
            mask_props = [p[i] for p, i in zip(proposals, pos)]
            mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_props, image_shapes)))
            losses["loss_mask"] = weighted_mask_loss(
                mask_logits, mask_props, [t["masks"] for t in targets], [t["labels"] for t in targets],
                [m[i] for m, i in zip(matched, pos)], [w[i] for w, i in zip(weights, pos)])
        return [], losses


# ---------------------------------------------------------------- the modules' networks

class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab v3) without the image-level branch: parallel 3 x 3
    convs of the given dilations (1: a 1 x 1 conv), concatenated and projected by a 1 x 1 conv."""

    def __init__(self, in_channels: int, channels: int, dilations: list[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, channels, 1 if d == 1 else 3, padding=0 if d == 1 else d, dilation=d),
                          nn.ReLU(inplace=True)) for d in dilations)
        self.project = nn.Sequential(nn.Conv2d(channels * len(dilations), channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class _Levels(nn.Module):
    """The shared backbone as a torchvision detection backbone: ``{"0": stride-16 features}`` plus
    ``"seg"`` (the ASPP's output) for the modules with a mask branch. A backbone without trainable
    parameters runs without a graph."""

    def __init__(self, backbone: Backbone, aspp: ASPP | None) -> None:
        super().__init__()
        self.body = backbone
        self.aspp = aspp
        self.out_channels = backbone.out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if any(p.requires_grad for p in self.body.parameters()):
            f = self.body(x)
        else:
            with torch.no_grad():
                f = self.body(x)
        out = OrderedDict([("0", f)])
        if self.aspp is not None:
            out["seg"] = self.aspp(f)
        return out


class _PreResized(GeneralizedRCNNTransform):
    """Normalise and batch only: images arrive at the scale drawn for them (data.py)."""

    def resize(self, image, target=None):
        return image, target


def build_rcnn(backbone: Backbone, num_classes: int, cfg: LabelPENetModelConfig, masks: bool) -> nn.Module:
    """The detection module (``masks=False``: Faster R-CNN) or a refinement / segmentation module
    (Mask R-CNN with the ASPP mask branch) on ``backbone``, with the weighted losses."""
    aspp = ASPP(backbone.out_channels, cfg.aspp_channels, cfg.aspp_dilations) if masks else None
    levels = _Levels(backbone, aspp)
    anchors = AnchorGenerator((tuple(int(s) for s in cfg.anchor_sizes),), (tuple(cfg.anchor_ratios),))
    c = backbone.out_channels
    common: dict[str, Any] = dict(
        rpn_anchor_generator=anchors, box_roi_pool=MultiScaleRoIAlign(["0"], cfg.roi_size, 2),
        box_head=TwoMLPHead(c * cfg.roi_size ** 2, cfg.hidden),
        box_predictor=FastRCNNPredictor(cfg.hidden, num_classes + 1),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        box_batch_size_per_image=cfg.box_batch_size_per_image, image_mean=backbone.mean.flatten().tolist(),
        image_std=backbone.std.flatten().tolist(), min_size=1, max_size=100000)
    if masks:
        model = MaskRCNN(levels, num_classes=None, mask_roi_pool=MultiScaleRoIAlign(["seg"], cfg.mask_roi_size, 2),
                         mask_head=MaskRCNNHeads(cfg.aspp_channels, [cfg.aspp_channels] * 2, 1),
                         mask_predictor=MaskRCNNPredictor(cfg.aspp_channels, cfg.aspp_channels, num_classes + 1), **common)
    else:
        model = FasterRCNN(levels, num_classes=None, **common)
    model.rpn.__class__ = WeightedRPN
    model.roi_heads.__class__ = WeightedRoIHeads
    model.transform.__class__ = _PreResized
    return model


class LabelPENet(nn.Module):
    """The four modules; ``backbone`` is the one network they share."""

    def __init__(self, cfg: LabelPENetModelConfig, num_classes: int, pretrained: bool | str | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        weights = cfg.pretrained if pretrained is None else pretrained
        # batch norm frozen when the config asks for pretrained weights, so a saved model is rebuilt the same way
        self.backbone = strided_backbone(cfg.backbone, weights, cfg.output_stride, cfg.frozen_stages,
                                         freeze_batch_norm=cfg.pretrained is not False, head=cfg.backbone_head)
        self.classification = ClassificationModule(self.backbone.out_channels, num_classes, cfg, self.backbone.stride)
        self.detection = build_rcnn(self.backbone, num_classes, cfg, masks=False)
        self.refinement = build_rcnn(self.backbone, num_classes, cfg, masks=True)
        self.segmentation = build_rcnn(self.backbone, num_classes, cfg, masks=True)

    def train(self, mode: bool = True) -> "LabelPENet":
        """A backbone without trainable parameters stays in eval mode: "fixed" includes the batch
        statistics of a backbone whose batch norm is live (random init)."""
        super().train(mode)
        if not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()
        return self

    def module_parameters(self, name: str) -> list[nn.Parameter]:
        """The trainable parameters of module ``name`` other than the shared backbone's."""
        shared = {id(p) for p in self.backbone.parameters()}
        return [p for p in getattr(self, name).parameters() if p.requires_grad and id(p) not in shared]

    def features(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Stride-16 features of each (3, H, W) [0, 1] image."""
        return [self.backbone(self.backbone.normalize(x)[None]) for x in images]

    def classification_outputs(self, images: list[torch.Tensor], proposals: list[torch.Tensor]) -> dict[str, Any]:
        trainable = any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            feats = self.features(images)
        pooled = self.classification.pool(feats, proposals)
        out = self.classification(pooled)
        out["pooled"] = pooled
        out["segments"] = torch.cat([torch.full((len(b),), i, dtype=torch.long, device=b.device)
                                     for i, b in enumerate(proposals)])
        return out

    def forward(self, batch: list[dict], task: str) -> dict[str, torch.Tensor]:
        """The training losses of ``task`` (a module's name) on ``batch`` (data.py's samples); the
        forward-backward phase calls this once per module (curriculum.py)."""
        images = [s["image"] for s in batch]
        if task == "classification":
            out = self.classification_outputs(images, [s["proposals"] for s in batch])
            _, s1 = classification_scores(out["xc"], out["xp"], out["segments"], len(batch))
            losses = {"loss_multilabel": multilabel_loss(s1, torch.stack([s["tags"] for s in batch]))}
            if all("proposal_labels" in s for s in batch):
                losses["loss_single_label"] = single_label_loss(
                    out["single"], torch.cat([s["proposal_labels"] for s in batch]))
            return losses
        return getattr(self, task)(images, [s["target"] for s in batch])
