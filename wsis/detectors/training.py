"""Training Mask R-CNN on any per-image instances (ground truth, WISE's pseudo masks, ...) with the
shared :class:`~wsis.engine.Trainer` and the iteration schedule of :mod:`wsis.engine.schedule`.

The schedule is given in iterations as in the papers (or in epochs): exactly ``schedule.iterations``
steps of ``schedule.batch_size`` images, the last epoch cut short where the count ends inside it. The
learning rate is stepped per iteration (linear warm-up, then x0.1 at each of ``lr_steps``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from wsis.detectors.maskrcnn import (InstanceDataset, InstancesFn, LabelMap, build_maskrcnn, collate,
                                     detector_optimizer, maskrcnn_step)
from wsis.engine import Trainer
from wsis.engine.schedule import schedule_hooks, schedule_length, total_iterations
from wsis.errors import InputError
from wsis.structures import RecordSet


def train_detector(records: RecordSet, instances_fn: InstancesFn, cfg: Any, workdir: Path,
                   meta: dict[str, Any]) -> tuple[torch.nn.Module, LabelMap]:
    """Mask R-CNN trained on ``instances_fn(record, epoch)`` for every record. ``cfg`` has the
    ``model``, ``data``, ``schedule``, ``test``, ``seed``, ``device`` and ``num_workers`` of a detector
    method's config; ``meta`` (the checkpoint's run description) gets ``steps`` and ``epochs`` (the last one
    possibly cut short)."""
    if len(records) == 0:
        raise InputError(records.name or "dataset", "no training images")
    labels = LabelMap(sorted(records.categories))
    torch.manual_seed(cfg.seed)
    model = build_maskrcnn(cfg.model, len(labels), data=cfg.data, test=cfg.test)
    dataset = InstanceDataset(records.records, instances_fn, labels, cfg.data, seed=cfg.seed)
    sched = cfg.schedule
    steps_per_epoch = math.ceil(len(dataset) / sched.batch_size)
    iterations = total_iterations(sched, steps_per_epoch)
    optimizer = detector_optimizer(model, sched.lr, sched.momentum, sched.weight_decay)
    meta.update(epochs=math.ceil(iterations / steps_per_epoch), steps=iterations)
    Trainer(model, optimizer, step_fn=maskrcnn_step, workdir=workdir, **schedule_length(sched),
            hooks=schedule_hooks(sched, optimizer),
            device=cfg.device, seed=cfg.seed, batch_size=sched.batch_size, num_workers=cfg.num_workers,
            collate_fn=collate, config=meta,
            # under torchrun, a step whose images have no instance leaves the mask head out of the graph
            find_unused_parameters=True).fit(dataset)
    return model, labels
