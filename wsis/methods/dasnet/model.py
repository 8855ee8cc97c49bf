"""The whole DASNet network (detector + one segmentation network per task) and the training step of
each stage (``papers/003``, 3.5)."""
from __future__ import annotations


import torch
from torch import nn

from wsis.methods.dasnet.attention import attend
from wsis.methods.dasnet.config import DASNetConfig
from wsis.methods.dasnet.data import SegSample
from wsis.methods.dasnet.detector import Detector
from wsis.methods.dasnet.segmentation import SegmentationNet, assemble, instance_losses, semantic_loss

TASKS = ("semantic", "instance")


class DASNet(nn.Module):
    def __init__(self, cfg: DASNetConfig, num_classes: int, pretrained: bool | str | None = None) -> None:
        super().__init__()
        self.detector = Detector(cfg.model.detector, num_classes, cfg.data.size, pretrained, post=cfg.test)
        seg = cfg.model.segmentation
        self.segmenters = nn.ModuleDict({
            task: SegmentationNet(self.detector.channels, task, seg.top_layers, seg.top_channels, seg.k)
            for task in cfg.model.tasks})
        self.k, self.roi_size = seg.k, seg.roi_size



def detector_step(model: nn.Module, batch: tuple[torch.Tensor, list[dict]]) -> tuple[torch.Tensor, dict]:
    """Stage 1: the detector's own losses on the boxes of all images."""
    images, targets = batch
    losses = model(images, targets)
    return sum(losses.values()), {k: v.detach() for k, v in losses.items()}


class SegmentationStage(nn.Module):
    """What stage 2 trains: one segmentation network on the (frozen unless ``finetune``) detector's
    features, attended with each sample's ground-truth class-specific boxes."""

    def __init__(self, detector: Detector, segmenter: SegmentationNet, k: int, roi_size: int, finetune: bool) -> None:
        super().__init__()
        self.detector, self.segmenter = detector, segmenter
        self.k, self.roi_size, self.finetune = k, roi_size, finetune

    def forward(self, samples: list[SegSample]) -> dict[str, torch.Tensor]:
        device = next(self.segmenter.parameters()).device
        images = torch.stack([s.image for s in samples]).to(device)
        if self.finetune:
            features = self.detector.features(images)
        else:
            with torch.no_grad():
                self.detector.eval()
                features = self.detector.features(images)
        attended = attend(features, [s.boxes.to(device) for s in samples])     # Eq. 1
        out = self.segmenter(attended)
        if self.segmenter.task == "semantic":
            target = torch.stack([s.semantic for s in samples]).to(device)
            return {"loss_semantic": semantic_loss(out, target)}
        rois = torch.cat([torch.cat([torch.full((len(s.rois), 1), float(i)), s.rois], 1)
                          for i, s in enumerate(samples)]).to(device)
        positive = torch.cat([s.positive for s in samples]).to(device)
        targets = torch.cat([s.targets for s in samples]).to(device)
        if len(rois) == 0:
            zero = out.sum() * 0.0
            return {"loss_score": zero, "loss_mask": zero}
        scale = out.shape[-1] / self.detector.size
        assembled = assemble(out, rois, self.k, self.roi_size, scale)
        return instance_losses(assembled, positive, targets)


def segmentation_step(model: nn.Module, batch: list[SegSample]) -> tuple[torch.Tensor, dict]:
    losses = model(batch)
    return sum(losses.values()), {k: v.detach() for k, v in losses.items()}
