"""Evaluation (BENCHMARK.md): VOC-protocol mAP^r + ABO, COCO protocol, box AP + CorLoc, mIoU.

Every evaluator takes the ground truth as a :class:`~wsis.structures.RecordSet` and predictions as
``{image_id: Instances}`` (a missing image has no predictions); none knows which method made them.
:class:`Evaluator` takes them one image at a time (``reset / process / evaluate``).
"""
from wsis.eval.coco_protocol import coco_bbox_eval, coco_segm_eval
from wsis.eval.detection import corloc, detection_ap
from wsis.eval.evaluator import DatasetEvaluator, Evaluator
from wsis.eval.instance import DEFAULT_THRESHOLDS, evaluate_instances
from wsis.eval.report import evaluate, format_table
from wsis.eval.semantic import instances_to_semantic, semantic_miou
from wsis.eval.subsets import VOC20_IN_COCO, restrict, voc20_ids

__all__ = [
    "DEFAULT_THRESHOLDS", "DatasetEvaluator", "Evaluator", "VOC20_IN_COCO", "coco_bbox_eval", "coco_segm_eval", "corloc", "detection_ap",
    "evaluate", "evaluate_instances", "format_table", "instances_to_semantic", "restrict", "semantic_miou",
    "voc20_ids",
]
