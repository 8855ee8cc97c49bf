"""Detectors trained on instance annotations (ground truth or pseudo labels): Mask R-CNN builders,
their training data, the step function for :class:`wsis.engine.Trainer` and prediction."""
