"""Weakly supervised detection heads on pooled proposal features: the two-stream WSDDN head (Bilen &
Vedaldi, CVPR 2016) and OICR-style refinement heads (Tang et al., CVPR 2017) with box regression,
as PDSL uses them (``papers/002``, section 3.2, Eqs. 2-4).

Proposals of several images travel as one (N, ...) tensor with ``segments`` (N,) giving each
proposal's image, so a batch needs no padding and no Python loop over proposals.

* :class:`WSDDNHead`: two fully connected layers (ReLU + dropout each), then the classification
  and detection streams (C scores each) and ``n^r`` refinement heads, each a (C + 1)-way classifier
  (column 0 = background) and a class-specific box regressor (4 C deltas, Fast R-CNN encoding with
  weights (10, 10, 5, 5)).
* :func:`wsddn_scores`: ``S^0 = softmax_classes(C) * softmax_proposals(D)``; image scores
  ``y_c = sum_p S^0_pc`` (in [0, 1]: the proposal softmax sums to 1).
* :func:`mil_loss`: Eq. 2, binary cross-entropy summed over classes (as written), averaged over images.
* :func:`oicr_pseudo_labels`: for each tagged class, the proposal of highest previous score is the
  pseudo ground truth; each proposal takes the class of the pseudo ground-truth box it overlaps most
  if that IoU >= ``fg_iou`` (0.5), else background, and the previous score of that box as its loss
  weight (OICR's weight); proposals whose best IoU is below ``ignore_iou`` get weight 0.
* :func:`refinement_loss`: Eq. 3.

Choices where the paper is silent, and why:

* Eq. 3 writes the weight as ``y_{t_p}``, which is undefined for background (t_p = 0); the weight
  here is OICR's, the previous head's score of the pseudo ground-truth box the proposal is assigned
  to -- the head PDSL says it "tweaks".
* Eq. 3 sums over proposals; here the sum is divided by the number of proposals (OICR's definition
  of the refinement loss and Fast R-CNN's box-loss normalisation), so the loss does not grow with
  the 2,000 proposals per image and the paper's lr 0.01 stays stable.
* ``ignore_iou = 0.1``: OICR's reference code ignores proposals that overlap no pseudo box at all
  (``BG_THRESH_LO``); 0 gives the paper's plain two-way rule.
* Pseudo ground-truth boxes are proposal boxes (the "top-scoring proposal"), not regressed boxes.
* Box regression uses smooth L1 with beta 1 (Fast R-CNN), on foreground proposals only.
* An image without tags gives no pseudo ground truth: its refinement terms have weight 0.
* Test scores: the mean of the refinement heads' foreground probabilities ("the average output
  of all heads"); with n^r = 0, WSDDN's S^0. Test boxes: the mean of the heads' regressions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou

BOX_CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
_EPS = 1e-6


# ---------------------------------------------------------------- segment ops

def segment_softmax(x: torch.Tensor, segments: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of (N, C) ``x`` over the rows of each segment, per column (rows of one image)."""
    index = segments[:, None].expand_as(x)
    # The shift only guards exp() against overflow; softmax does not depend on it, so no gradient.
    top = x.detach().new_full((num_segments, x.shape[1]), float("-inf")).scatter_reduce(
        0, index, x.detach(), "amax", include_self=True)
    e = (x - top[segments]).exp()
    total = e.new_zeros(num_segments, x.shape[1]).index_add(0, segments, e)
    return e / total[segments]


def segment_sum(x: torch.Tensor, segments: torch.Tensor, num_segments: int) -> torch.Tensor:
    """(num_segments, C) sums of the rows of (N, C) ``x`` per segment."""
    return x.new_zeros(num_segments, x.shape[1]).index_add(0, segments, x)


# ---------------------------------------------------------------- WSDDN (Eq. 2)

def wsddn_scores(cls_logits: torch.Tensor, det_logits: torch.Tensor, segments: torch.Tensor,
                 num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposal scores ``S^0`` (N, C) and image scores ``y`` (B, C) of the two streams."""
    s0 = cls_logits.softmax(dim=1) * segment_softmax(det_logits, segments, num_images)
    return s0, segment_sum(s0, segments, num_images)


def mil_loss(image_scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 2: multi-label cross-entropy of (B, C) image scores in [0, 1] against 0/1 tags, summed over
    classes, averaged over images."""
    y = image_scores.clamp(_EPS, 1.0 - _EPS)
    t = labels.to(y.dtype)
    return -(t * y.log() + (1 - t) * (1 - y).log()).sum(dim=1).mean()


# ---------------------------------------------------------------- OICR refinement (Eq. 3)

@dataclass
class PseudoLabels:
    """Refinement targets of the P proposals of one image.

    ``labels`` (P,) in 0..C (0 = background), ``weights`` (P,), ``gt_boxes`` (P, 4) the pseudo
    ground-truth box each proposal was compared with, ``top`` (K,) the proposal index chosen as
    pseudo ground truth for each tagged class ``classes`` (K,) (0-based), ``top_scores`` (K,).
    """

    labels: torch.Tensor
    weights: torch.Tensor
    gt_boxes: torch.Tensor
    top: torch.Tensor
    classes: torch.Tensor
    top_scores: torch.Tensor

    @property
    def foreground(self) -> torch.Tensor:
        return self.labels > 0


@torch.no_grad()
def oicr_pseudo_labels(boxes: torch.Tensor, scores: torch.Tensor, image_labels: torch.Tensor,
                       fg_iou: float = 0.5, ignore_iou: float = 0.1) -> PseudoLabels:
    """Pseudo labels of one image's (P, 4) proposals from the previous head's (P, C) scores and the
    (C,) 0/1 tags (rule in the module docstring)."""
    p = len(boxes)
    classes = torch.nonzero(image_labels > 0).flatten()
    if len(classes) == 0 or p == 0:
        zero = boxes.new_zeros(p)
        return PseudoLabels(torch.zeros(p, dtype=torch.long, device=boxes.device), zero, boxes.clone(),
                            classes, classes, boxes.new_zeros(0))
    class_scores = scores[:, classes]                       # (P, K)
    top = class_scores.argmax(dim=0)                        # first maximum: lowest index wins ties
    top_scores = class_scores[top, torch.arange(len(classes), device=boxes.device)]
    iou = box_iou(boxes, boxes[top])                        # (P, K)
    best_iou, which = iou.max(dim=1)                        # ties -> the first tagged class
    labels = torch.where(best_iou >= fg_iou, classes[which] + 1, torch.zeros_like(which))
    weights = torch.where(best_iou >= ignore_iou, top_scores[which], torch.zeros_like(best_iou))
    return PseudoLabels(labels, weights, boxes[top][which], top, classes, top_scores)


def refinement_loss(logits: torch.Tensor, deltas: torch.Tensor | None, proposals: torch.Tensor,
                    target: PseudoLabels, beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 for one image and one head: weighted (C + 1)-way cross-entropy and, when ``deltas``
    (P, 4 C) are given, weighted smooth-L1 box regression on foreground proposals; both divided
    by the number of proposals."""
    n = max(len(proposals), 1)
    ce = F.cross_entropy(logits, target.labels, reduction="none")
    cls = (target.weights * ce).sum() / n
    if deltas is None:
        return cls, logits.new_zeros(())
    fg = torch.nonzero(target.foreground).flatten()
    if len(fg) == 0:
        return cls, deltas.sum() * 0.0
    pred = deltas.view(len(deltas), -1, 4)[fg, target.labels[fg] - 1]
    goal = BOX_CODER.encode_single(target.gt_boxes[fg], proposals[fg])
    box = F.smooth_l1_loss(pred, goal, beta=beta, reduction="none").sum(dim=1)
    return cls, (target.weights[fg] * box).sum() / n


def decode_boxes(deltas: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
    """(P, 4 C) class-specific deltas on (P, 4) proposals -> (P, C, 4) boxes."""
    p = len(proposals)
    if p == 0:
        return proposals.new_zeros(0, deltas.shape[1] // 4, 4)
    return BOX_CODER.decode_single(deltas.reshape(p, -1), proposals).reshape(p, -1, 4)


# ---------------------------------------------------------------- the head

class WSDDNHead(nn.Module):
    """Pooled proposal features (N, D) -> WSDDN streams and ``refine_heads`` refinement heads."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 4096, dropout: float = 0.5,
                 refine_heads: int = 4, box_regression: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.cls_stream = nn.Linear(hidden, num_classes)
        self.det_stream = nn.Linear(hidden, num_classes)
        self.refine = nn.ModuleList(nn.Linear(hidden, num_classes + 1) for _ in range(refine_heads))
        self.boxes = nn.ModuleList(nn.Linear(hidden, 4 * num_classes) for _ in range(refine_heads if box_regression else 0))
        for layer in self.fc:
            if isinstance(layer, nn.Linear):
                # fc6/fc7 start from scratch here (WSDDN inherits VGG's): Detectron2's fc-head
                # initialisation keeps the activations' scale, where std 0.01 shrinks them ~10x a layer.
                nn.init.kaiming_uniform_(layer.weight, a=1)
                nn.init.zeros_(layer.bias)
        for layer in [self.cls_stream, self.det_stream, *self.refine, *self.boxes]:
            # Fast R-CNN's predictor initialisation: regressors start near the identity transform.
            nn.init.normal_(layer.weight, std=0.001 if any(layer is b for b in self.boxes) else 0.01)
            nn.init.zeros_(layer.bias)

    @property
    def refine_heads(self) -> int:
        return len(self.refine)

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        h = self.fc(pooled.flatten(1))
        return {"cls": self.cls_stream(h), "det": self.det_stream(h),
                "refine": [head(h) for head in self.refine], "deltas": [head(h) for head in self.boxes]}


def inference_scores(outputs: dict, segments: torch.Tensor, num_images: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Test-time (N, C) scores (mean refinement probability, or S^0 without refinement heads) and
    the mean (N, 4 C) deltas (None without regression)."""
    if outputs["refine"]:
        scores = torch.stack([r.softmax(dim=1)[:, 1:] for r in outputs["refine"]]).mean(dim=0)
    else:
        scores = wsddn_scores(outputs["cls"], outputs["det"], segments, num_images)[0]
    deltas = torch.stack(outputs["deltas"]).mean(dim=0) if outputs["deltas"] else None
    return scores, deltas
