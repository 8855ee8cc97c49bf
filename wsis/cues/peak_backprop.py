"""Peak backpropagation (PRM, Zhou et al. 2018): peak response maps by a winner-take-all backward rule.

Inside :func:`peak_backprop`, every ``nn.Conv2d`` (subclasses too, e.g. timm's ``Conv2dSame``;
grouped and depthwise convs included) keeps its forward value but back-propagates, as the
reference's ``pr_conv2d``::

    x' = x - min(x)                          min over the whole input of the conv, per image
    Z  = conv(x', relu(W))                   no bias; padding pads x' (not x) with zeros
    grad_x = conv_transpose(g / Z, relu(W)) * x'     g / Z := 0 where Z < 1e-10

The bias only enters the forward value. Other layers (BN, activations, pooling, upsampling) keep
their ordinary backward. The PRM of a peak is the input-image gradient of a one-hot at that peak of
the upsampled CRM, summed over colour channels, clamped at 0 and divided by its sum (the reference's
normalisation; a map that is zero everywhere stays zero instead of becoming NaN).

The rule is linear in the output gradient, so all the peaks of an image are one batched backward
pass: ``torch.autograd.grad(..., is_grads_batched=True)`` vmaps the backward graph over the K one-hot
gradients (the custom Functions below are vmap-compatible). ``batched=False`` runs the reference's
one-backward-per-peak loop.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from functools import partial
from typing import Iterator, Literal

import torch
from torch import nn

from wsis.cues.prm import PRMNet, peak_stimulation

EPS = 1e-10  # the reference's threshold for a zero normaliser


class _ShiftWithInputGain(torch.autograd.Function):
    """Forward ``x - offset``; backward multiplies the gradient by ``x - offset`` (the rule's last factor)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return x - offset

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        shifted, = ctx.saved_tensors
        return grad * shifted, None


class _ValueWithNormalisedGrad(torch.autograd.Function):
    """Forward the conv's true output; send ``grad / Z`` (0 where Z ~ 0) to the normaliser Z instead."""

    generate_vmap_rule = True

    @staticmethod
    def forward(value: torch.Tensor, norm: torch.Tensor, inv_norm: torch.Tensor) -> torch.Tensor:
        return value.clone()  # a new tensor: the next layer may modify it in place

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[2])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inv_norm, = ctx.saved_tensors
        return None, grad * inv_norm, None


def _positive_twin(conv: nn.Conv2d) -> nn.Conv2d:
    """A shallow copy of ``conv`` whose weight is relu(W) and which has no bias; it shares the
    conv's padding logic, so subclasses that pad in ``forward`` are handled the same way."""
    twin = copy.copy(conv)
    twin.__dict__.pop("forward", None)
    weight = nn.Parameter(torch.relu(conv.weight.detach()), requires_grad=False)
    twin.__dict__["_parameters"] = {"weight": weight, "bias": None}
    return twin


def _peak_conv_forward(conv: nn.Conv2d, twin: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    offset = x.detach().amin(dim=tuple(range(1, x.ndim)), keepdim=True)
    shifted = _ShiftWithInputGain.apply(x, offset)
    norm = type(twin).forward(twin, shifted)
    with torch.no_grad():
        value = type(conv).forward(conv, x)
        inv_norm = torch.where(norm < EPS, 0.0, 1.0 / (norm.abs() + EPS))
    return _ValueWithNormalisedGrad.apply(value, norm, inv_norm)


@contextmanager
def peak_backprop(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and give every Conv2d the peak-backprop backward rule; restore
    both on exit. Conv weights are read on entry (the rule is for inference only)."""
    was_training = model.training
    model.eval()
    patched: list[tuple[nn.Module, object]] = []
    try:
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                # An instance attribute shadows the class's forward; nn.Module.__call__ looks it up.
                patched.append((module, module.__dict__.get("forward")))
                module.forward = partial(_peak_conv_forward, module, _positive_twin(module))
        yield model
    finally:
        for module, previous in patched:
            if previous is None:
                del module.forward
            else:
                module.forward = previous
        model.train(was_training)


def normalise_prms(grads: torch.Tensor) -> torch.Tensor:
    """(K, 3, H, W) input gradients -> (K, H, W) PRMs: colour sum, clamp at 0, divide by the sum."""
    prms = grads.sum(dim=1).clamp(min=0)
    total = prms.sum(dim=(1, 2), keepdim=True)
    return torch.where(total > 0, prms / torch.where(total > 0, total, 1.0), 0.0)


def _one_hots(shape: torch.Size, peaks: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    onehots = torch.zeros((len(peaks),) + tuple(shape), dtype=dtype, device=device)
    k = torch.arange(len(peaks), device=device)
    onehots[k, peaks[:, 0], peaks[:, 1], peaks[:, 2], peaks[:, 3]] = 1
    return onehots


def backprop_peaks(crm: torch.Tensor, image: torch.Tensor, peaks: torch.Tensor, *,
                   batched: bool = True, chunk: int = 16) -> torch.Tensor:
    """Input gradients (K, 3, H, W) of one-hots at ``peaks`` of ``crm``, built from ``image`` by one
    forward pass inside :func:`peak_backprop`. Batched: one vmapped backward per ``chunk`` peaks;
    otherwise one backward per peak. The graph is kept, so the call can be repeated."""
    step = chunk if batched else 1
    grads = []
    for start in range(0, len(peaks), step):
        onehots = _one_hots(crm.shape, peaks[start:start + step], crm.dtype, crm.device)
        if batched:
            g, = torch.autograd.grad(crm, image, onehots, retain_graph=True, is_grads_batched=True)
        else:
            g, = torch.autograd.grad(crm, image, onehots[0], retain_graph=True)
            g = g[None]
        grads.append(g[:, 0])
    return torch.cat(grads)


def backprop_peaks_expanded(model: PRMNet, image: torch.Tensor, peaks: torch.Tensor, *,
                            chunk: int = 16) -> torch.Tensor:
    """Same gradients as :func:`backprop_peaks`, computed by a forward pass on the image repeated
    once per peak and one backward pass whose k-th sample carries the k-th one-hot (per-sample
    gradients without vmap). Must run inside :func:`peak_backprop`."""
    grads = []
    for start in range(0, len(peaks), chunk):
        part = peaks[start:start + chunk]
        x = image.detach().expand(len(part), -1, -1, -1).clone().requires_grad_(True)
        crm = model.crm(x)
        onehots = torch.zeros_like(crm)
        onehots[torch.arange(len(part), device=crm.device), part[:, 1], part[:, 2], part[:, 3]] = 1
        g, = torch.autograd.grad(crm, x, onehots)
        grads.append(g)
    return torch.cat(grads)


BatchMode = Literal["vmap", "expand"]


def peak_response_maps(model: PRMNet, image: torch.Tensor, peaks: torch.Tensor | None = None, *,
                       batched: bool = True, batch_mode: BatchMode = "vmap",
                       class_threshold: float | None = None, peak_threshold: float | None = None,
                       chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PRMs of one image (1, 3, H, W): ``(peaks (K, 4) [0, class, y, x], prms (K, H, W), crm (C, h, w))``.

    ``peaks`` index the upsampled CRM (``model.crm``); when None they are ``model.find_peaks`` of it,
    keeping, as the reference, those whose class score is >= ``class_threshold`` and whose value is >
    ``peak_threshold`` (no test when a threshold is None). ``crm`` is the upsampled CRM, detached.
    ``batched=False`` is the reference's loop of one backward pass per peak; otherwise ``chunk``
    peaks share a pass, built as ``batch_mode`` says (see :func:`backprop_peaks` and
    :func:`backprop_peaks_expanded`). All modes give the same maps.
    """
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"peak_response_maps takes one image (1, 3, H, W), got {tuple(image.shape)}")
    if batch_mode not in ("vmap", "expand"):
        raise ValueError(f"batch_mode must be 'vmap' or 'expand', got {batch_mode!r}")
    expand = batched and batch_mode == "expand"
    with peak_backprop(model):
        image = image.detach().requires_grad_(not expand)
        with torch.set_grad_enabled(not expand):
            crm = model.crm(image)
        if peaks is None:
            peaks = _select_peaks(model, crm.detach(), class_threshold, peak_threshold)
        peaks = peaks.to(crm.device)
        if len(peaks) == 0:
            grads = image.new_zeros((0,) + tuple(image.shape[1:]))
        elif expand:
            grads = backprop_peaks_expanded(model, image, peaks, chunk=chunk)
        else:
            grads = backprop_peaks(crm, image, peaks, batched=batched, chunk=chunk)
        prms = normalise_prms(grads)
    return peaks, prms.detach(), crm.detach()[0]


def _select_peaks(model: PRMNet, crm: torch.Tensor, class_threshold: float | None,
                  peak_threshold: float | None) -> torch.Tensor:
    peaks, values = model.find_peaks(crm)
    keep = torch.ones(len(peaks), dtype=torch.bool, device=crm.device)
    if class_threshold is not None:
        scores = peak_stimulation(crm, model.win_size, model.peak_filter)
        keep &= scores[peaks[:, 0], peaks[:, 1]] >= class_threshold
    if peak_threshold is not None:
        keep &= values > peak_threshold
    return peaks[keep]
