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
one-backward-per-peak loop, the fastest on a CPU (``benchmarks/bench_peak_backprop.py``: 8 peaks at
448 px, one thread: loop 12.1 s, all 8 vmapped 19.0 s, chunks of 2 / 4 peaks 14.5 / 13.8 s, the
image repeated per peak 56.9 s, all equal maps; channels-last was slower too, 7.9 s vs 4.8 s for
3 peaks): the batched backward is memory-bound there. The loop builds its graph from lazy
Functions (:class:`_LazyPeakConv2d`), whose forward is the plain conv and which compute the rule's
factors ``x'`` and ``1 / Z`` in the first backward pass and keep them for the next peaks: the
forward pass costs one conv per layer instead of two, and an image without peaks never pays for
the factors (same maps, tested).
"""
from __future__ import annotations

import copy
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsis.cues.peaks import crm_peaks
from wsis.cues.prm import PRMNet

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
    twin.__dict__["source_weight"] = conv.weight
    return twin


def _peak_conv_forward(conv: nn.Conv2d, twin: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Generic path for Conv2d subclasses whose padding this module does not know: the rule built
    from autograd's own conv backward (correct, but vmap runs that backward once per peak)."""
    offset = x.detach().amin(dim=tuple(range(1, x.ndim)), keepdim=True)
    shifted = _ShiftWithInputGain.apply(x, offset)
    norm = type(twin).forward(twin, shifted)
    with torch.no_grad():
        value = type(conv).forward(conv, x)
        inv_norm = torch.where(norm < EPS, 0.0, 1.0 / (norm.abs() + EPS))
    return _ValueWithNormalisedGrad.apply(value, norm, inv_norm)


class _PeakConv2d(torch.autograd.Function):
    """A zero-padded conv whose backward is the rule written out with ``conv_transpose2d``.

    vmap batches ``conv_transpose2d`` (a forward op) by folding the peaks into the batch dimension,
    whereas autograd's ``convolution_backward`` has no batching rule and would run once per peak.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, pos_weight, shifted, inv_norm, pads, stride, dilation, groups):
        return F.conv2d(F.pad(x, pads), weight, bias, stride, 0, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, _, _, pos_weight, shifted, inv_norm, pads, stride, dilation, groups = inputs
        ctx.save_for_backward(pos_weight, shifted, inv_norm)
        ctx.conf = (pads, stride, dilation, groups, tuple(x.shape[-2:]))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pos_weight, shifted, inv_norm = ctx.saved_tensors
        (left, right, top, bottom), stride, dilation, groups, (h, w) = ctx.conf
        in_shape = (shifted.shape[1], h + top + bottom, w + left + right)
        g = _ConvInputGrad.apply(grad * inv_norm, pos_weight, in_shape, stride, groups, dilation)
        if top or bottom or left or right:  # crop the padding (a no-op slice would be an alias vmap rejects)
            g = g.narrow(-2, top, h).narrow(-1, left, w)
        return g * shifted, None, None, None, None, None, None, None, None, None


class _ConvInputGrad(torch.autograd.Function):
    """The input gradient of a conv (what autograd's conv backward computes) as a Function with an
    explicit vmap rule folding the peaks into the batch dimension, so that all peaks go through one
    call of the backend's backward-data kernel."""

    @staticmethod
    def forward(g, weight, in_shape, stride, groups, dilation):
        return torch.nn.grad.conv2d_input((g.shape[0],) + tuple(in_shape), weight, g, stride, 0, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("peak backpropagation is not differentiable twice")

    @staticmethod
    def vmap(info, in_dims, g, weight, in_shape, stride, groups, dilation):
        if in_dims[1] is None:  # peaks: fold them into the batch dimension
            g = g.movedim(in_dims[0], 0)
            k, n = g.shape[:2]
            out = torch.nn.grad.conv2d_input((k * n,) + tuple(in_shape), weight, g.reshape(k * n, *g.shape[2:]),
                                             stride, 0, dilation, groups)
            return out.reshape(k, n, *out.shape[1:]), 0
        # stacked networks (one weight each): fold them into the channel groups, one kernel call
        weight = weight.movedim(in_dims[1], 0)
        m = weight.shape[0]
        g = g.movedim(in_dims[0], 0) if in_dims[0] is not None else g.expand(m, *g.shape)
        n, c_out = g.shape[1], g.shape[2]
        g = g.transpose(0, 1).reshape(n, m * c_out, *g.shape[3:])
        c_in = in_shape[0]
        out = torch.nn.grad.conv2d_input((n, m * c_in) + tuple(in_shape[1:]), weight.reshape(m * c_out, *weight.shape[2:]),
                                         g, stride, 0, dilation, groups * m)
        return out.reshape(n, m, c_in, *out.shape[2:]).transpose(0, 1), 0


class _PiecewiseLinear(torch.autograd.Function):
    """An activation's value with the backward ``grad * slope``, for piecewise-linear activations
    (ReLU, ReLU6) whose slope is a 0/1 mask: a product, which vmap batches."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, value, slope):
        return value.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[2])

    @staticmethod
    def backward(ctx, grad):
        slope, = ctx.saved_tensors
        return grad * slope, None, None


def _inverse_norm(norm: torch.Tensor) -> torch.Tensor:
    """``1 / Z`` where ``Z >= EPS``, else 0: the value of ``torch.where(norm < EPS, 0, 1 / (|Z| + EPS))``
    in three in-place passes instead of five allocating ones (same bits)."""
    inv = norm.abs().add_(EPS).reciprocal_()
    return inv.masked_fill_(norm < EPS, 0.0)


def _is_pointwise(weight: torch.Tensor, pads, stride, dilation, groups: int) -> bool:
    """A 1x1 conv without padding, stride or groups: a matrix product over the pixels."""
    return weight.shape[-2:] == (1, 1) and not any(pads) and tuple(stride) == (1, 1) and groups == 1


def _conv(x: torch.Tensor, weight: torch.Tensor, bias, pads, stride, dilation, groups: int) -> torch.Tensor:
    """The conv of ``x`` zero-padded by ``pads`` (F.pad order). Symmetric padding is passed to the
    conv itself rather than copied out with ``F.pad`` (the same values, bit for bit)."""
    left, right, top, bottom = pads
    if left == right and top == bottom:
        return F.conv2d(x, weight, bias, stride, (top, left), dilation, groups)
    return F.conv2d(F.pad(x, pads), weight, bias, stride, 0, dilation, groups)


class _LazyPeakConv2d(torch.autograd.Function):
    """:class:`_PeakConv2d` for the per-peak loop (plain autograd, no vmap): the forward is the
    conv alone and saves its input; the rule's factors ``x'`` and ``1 / Z`` are computed by the
    first backward pass and kept for the next peaks. An image without peaks never pays for them,
    and the forward pass is one conv per layer instead of two. At one thread, a 1x1 conv's input
    gradient is one matrix product (``W+^T g``): there PyTorch's 1x1 conv backward takes the slow
    THNN path, up to 7x slower at the early layers' sizes, with the same bits (with more threads
    it takes oneDNN's, whose sums round differently, so it is kept)."""

    @staticmethod
    def forward(ctx, x, weight, bias, pos_weight, pads, stride, dilation, groups):
        ctx.save_for_backward(x, pos_weight)
        ctx.conf = (pads, stride, dilation, groups)
        ctx.factors = None
        return _conv(x, weight, bias, pads, stride, dilation, groups)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, pos_weight = ctx.saved_tensors
        pads, stride, dilation, groups = ctx.conf
        if ctx.factors is None:
            shifted = x - x.amin(dim=tuple(range(1, x.ndim)), keepdim=True)
            norm = _conv(shifted, pos_weight, None, pads, stride, dilation, groups)
            ctx.factors = shifted, _inverse_norm(norm)
        shifted, inv_norm = ctx.factors
        scaled = grad * inv_norm
        if _is_pointwise(pos_weight, pads, stride, dilation, groups) and x.shape[0] == 1 and torch.get_num_threads() == 1:
            c_out, c_in = pos_weight.shape[:2]
            g = torch.mm(pos_weight.view(c_out, c_in).t(), scaled.reshape(c_out, -1)).view(x.shape)
            return g.mul_(shifted), None, None, None, None, None, None, None
        left, right, top, bottom = pads
        h, w = x.shape[-2:]
        in_shape = (x.shape[0], x.shape[1], h + top + bottom, w + left + right)
        g = torch.nn.grad.conv2d_input(in_shape, pos_weight, scaled, stride, 0, dilation, groups)
        if top or bottom or left or right:
            g = g[..., top:top + h, left:left + w]
        return g * shifted, None, None, None, None, None, None, None


class _LazyAffineAct(torch.autograd.Function):
    """Eval-mode batch norm and its piecewise-linear activation (timm's ``BatchNormAct2d``; ReLU,
    ReLU6 or none) for the per-peak loop, as one Function: forward ``clamp(x * scale + shift, 0,
    top)`` (the same operations as :func:`_affine_batchnorm_forward`, in place), backward one product
    with ``slope * scale``, computed by the first backward pass from the saved output and kept.
    The slope is 0 or 1, so the product equals the two products it replaces bit for bit."""

    @staticmethod
    def forward(ctx, x, scale, shift, top):
        y = x * scale[:, None, None]
        y.add_(shift[:, None, None])
        if top is not None:
            y.clamp_(0.0, top)
        ctx.save_for_backward(y if top is not None else None, scale)
        ctx.top = top
        ctx.factor = None
        return y

    @staticmethod
    def backward(ctx, grad):
        if ctx.factor is None:
            y, scale = ctx.saved_tensors
            if ctx.top is None:
                ctx.factor = scale[:, None, None]
            else:  # 0 < clamp(z, 0, top) < top exactly where 0 < z < top
                ctx.factor = ((y > 0) & (y < ctx.top)).to(y.dtype).mul_(scale[:, None, None])
        return grad * ctx.factor, None, None, None


class _LazyPiecewiseLinear(torch.autograd.Function):
    """:class:`_PiecewiseLinear` for the per-peak loop: the 0/1 slope is computed by the first
    backward pass from the saved input, and kept."""

    @staticmethod
    def forward(ctx, x, top: float):
        ctx.save_for_backward(x)
        ctx.top = top
        ctx.slope = None
        return x.clamp(0.0, top)

    @staticmethod
    def backward(ctx, grad):
        if ctx.slope is None:
            x, = ctx.saved_tensors
            ctx.slope = ((x > 0) & (x < ctx.top)).to(x.dtype)
        return grad * ctx.slope, None


class _WinnerLinear(torch.autograd.Function):
    """The rule for a fully connected layer (Excitation BP's fc layers, the same marginal winning
    probabilities): forward ``x W^T + b``; backward ``((g / Z) relu(W)) * x'`` with
    ``x' = x - min(x)`` per sample and ``Z = x' relu(W)^T``. A product and two matmuls: vmap batches it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, pos_weight, shifted, inv_norm):
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[3], inputs[4], inputs[5])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pos_weight, shifted, inv_norm = ctx.saved_tensors
        return (grad * inv_norm) @ pos_weight * shifted, None, None, None, None, None


def winner_linear_factors(x: torch.Tensor, pos_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule's factors of a fully connected layer: ``x'`` (per-sample shift to a zero minimum)
    and ``1 / Z`` (0 where ``Z < EPS``), as for a conv."""
    shifted = x - x.amin(dim=tuple(range(1, x.ndim)), keepdim=True)
    norm = F.linear(shifted, pos_weight)
    return shifted, torch.where(norm < EPS, 0.0, 1.0 / (norm.abs() + EPS))


def _winner_linear_forward(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        pos_weight = layer.weight.detach().clamp(min=0)
        shifted, inv_norm = winner_linear_factors(x.detach(), pos_weight)
    return _WinnerLinear.apply(x, layer.weight, layer.bias, pos_weight, shifted, inv_norm)


# Loop mode (one plain backward per peak) builds the graph from the lazy Functions above; the
# batched modes need the vmap-compatible ones. Set by :func:`peak_backprop`.
_LAZY = False


def _activation(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(act, nn.Identity):
        return x
    if isinstance(act, (nn.ReLU, nn.ReLU6)):
        top = 6.0 if isinstance(act, nn.ReLU6) else float("inf")
        if _LAZY:
            return _LazyPiecewiseLinear.apply(x, top)
        with torch.no_grad():
            value = x.clamp(0.0, top)
            slope = ((x > 0) & (x < top)).to(x.dtype)
        return _PiecewiseLinear.apply(x, value, slope)
    return act(x)


def _input_pads(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(left, right, top, bottom) zero padding that ``conv`` applies to ``x``; None if unknown."""
    if conv.padding_mode != "zeros":
        return None
    if type(conv).forward is nn.Conv2d.forward:
        return tuple(int(p) for p in conv._reversed_padding_repeated_twice)  # F.pad order
    if type(conv).__name__ == "Conv2dSame":  # timm: TensorFlow "same" padding computed per input size
        pads = []
        for size, k, s, d in zip(x.shape[-2:], conv.kernel_size, conv.stride, conv.dilation):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        return (pads[1][0], pads[1][1], pads[0][0], pads[0][1])
    return None


def _fast_peak_conv_forward(conv: nn.Conv2d, twin: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    pads = _input_pads(conv, x)
    if pads is None:
        return _peak_conv_forward(conv, twin, x)
    with torch.no_grad():
        # relu(W) of the weight in use: under functional_call (stacked networks) that is not the
        # weight the twin copied on entry
        pos_weight = twin.weight if conv.weight is twin.source_weight else conv.weight.detach().clamp(min=0)
    if _LAZY:
        return _LazyPeakConv2d.apply(x, conv.weight, conv.bias, pos_weight, pads, tuple(conv.stride),
                                     tuple(conv.dilation), conv.groups)
    with torch.no_grad():
        shifted = x - x.amin(dim=tuple(range(1, x.ndim)), keepdim=True)
        norm = F.conv2d(F.pad(shifted, pads), pos_weight, None, conv.stride, 0, conv.dilation, conv.groups)
        inv_norm = torch.where(norm < EPS, 0.0, 1.0 / (norm.abs() + EPS))
    return _PeakConv2d.apply(x, conv.weight, conv.bias, pos_weight, shifted, inv_norm, pads,
                             tuple(conv.stride), tuple(conv.dilation), conv.groups)


def _affine_batchnorm_forward(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode batch norm as a per-channel multiply-add (plus timm's fused drop/activation):
    the same values, but a backward that vmap batches (``native_batch_norm_backward`` has no rule)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    if _LAZY and (top := _fused_activation_top(bn)) is not False:
        return _LazyAffineAct.apply(x, scale, shift, top)
    y = x * scale[:, None, None] + shift[:, None, None]
    if type(bn).__name__ == "BatchNormAct2d":
        y = _activation(bn.act, bn.drop(y))
    return y


def _fused_activation_top(bn: nn.Module) -> float | None | bool:
    """The clamp's top of a batch norm's own activation that :class:`_LazyAffineAct` fuses (inf for
    ReLU, 6 for ReLU6, None for a plain batch norm); False when it has another activation or a drop."""
    if type(bn).__name__ != "BatchNormAct2d":
        return None
    if not isinstance(bn.drop, nn.Identity):
        return False
    if isinstance(bn.act, nn.Identity):
        return None
    if isinstance(bn.act, (nn.ReLU, nn.ReLU6)):
        return 6.0 if isinstance(bn.act, nn.ReLU6) else float("inf")
    return False


def _affine_batchnorm_applies(bn: nn.Module) -> bool:
    known = type(bn).forward is nn.BatchNorm2d.forward or type(bn).__name__ == "BatchNormAct2d"
    return isinstance(bn, nn.BatchNorm2d) and known and bn.running_var is not None


@contextmanager
def peak_backprop(model: nn.Module, lazy: bool = False, linear: bool = False) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and give every Conv2d the peak-backprop backward rule; restore
    both on exit. Conv weights are read on entry (the rule is for inference only). ``lazy``: the
    graph is for plain (not vmapped) backward passes, which then compute the rule's factors on
    first use (:class:`_LazyPeakConv2d`). ``linear``: every ``nn.Linear`` gets the same rule
    (:class:`_WinnerLinear`) -- Excitation BP through fully connected heads
    (:mod:`wsis.cues.excitation`); PRM's networks have none on the CRM's path."""
    global _LAZY
    was_training = model.training
    model.eval()
    patched: list[tuple[nn.Module, object]] = []
    previous_lazy, _LAZY = _LAZY, lazy
    try:
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                # An instance attribute shadows the class's forward; nn.Module.__call__ looks it up.
                patched.append((module, module.__dict__.get("forward")))
                module.forward = partial(_fast_peak_conv_forward, module, _positive_twin(module))
            elif linear and isinstance(module, nn.Linear):
                patched.append((module, module.__dict__.get("forward")))
                module.forward = partial(_winner_linear_forward, module)
            elif _affine_batchnorm_applies(module):
                patched.append((module, module.__dict__.get("forward")))
                module.forward = partial(_affine_batchnorm_forward, module)
        yield model
    finally:
        for module, previous in patched:
            if previous is None:
                del module.forward
            else:
                module.forward = previous
        model.train(was_training)
        _LAZY = previous_lazy


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


def backprop_peaks(crm: torch.Tensor, image: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
    """Input gradients (K, 3, H, W) of one-hots at ``peaks`` of ``crm``, built from ``image`` by a
    forward pass inside :func:`peak_backprop`: the reference's loop, one backward per peak. The
    graph is kept, so the call can be repeated."""
    grads = []
    for k in range(len(peaks)):
        onehot = _one_hots(crm.shape, peaks[k:k + 1], crm.dtype, crm.device)[0]
        g, = torch.autograd.grad(crm, image, onehot, retain_graph=True)
        grads.append(g)
    return torch.cat(grads)


def backprop_peaks_vmap(vjp_fn, crm_shape: torch.Size, peaks: torch.Tensor, *, chunk: int = 16,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The same gradients from ``vjp_fn`` (``torch.func.vjp`` of the CRM inside
    :func:`peak_backprop`), vmapped over the peaks' one-hots: one batched backward per ``chunk``
    peaks. The custom Functions above give every conv and batch norm a batching rule, so the
    peaks travel through the backward as a batch dimension (``is_grads_batched`` uses the legacy
    vmap, which loops over samples for convolutions)."""
    grads = []
    for start in range(0, len(peaks), chunk):
        onehots = _one_hots(crm_shape, peaks[start:start + chunk], dtype, peaks.device)
        g, = torch.func.vmap(vjp_fn)(onehots)
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
                       select: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PRMs of one image (1, 3, H, W): ``(peaks (K, 4) [0, class, y, x], prms (K, H, W), crm (C, h, w))``.

    ``peaks`` index the upsampled CRM (``model.crm``); when None they are ``model.find_peaks`` of it,
    keeping, as the reference, those whose class score is >= ``class_threshold`` and whose value is >
    ``peak_threshold`` (no test when a threshold is None), or ``select(crm)`` when given (a caller's
    own rule, applied to this forward pass's CRM (1, C, h, w) instead of a second forward pass).
    ``crm`` is the upsampled CRM, detached.
    ``batched=False`` is the reference's loop of one backward pass per peak; otherwise ``chunk``
    peaks share a pass, built as ``batch_mode`` says (see :func:`backprop_peaks` and
    :func:`backprop_peaks_expanded`). All modes give the same maps.
    """
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"peak_response_maps takes one image (1, 3, H, W), got {tuple(image.shape)}")
    if batch_mode not in ("vmap", "expand"):
        raise ValueError(f"batch_mode must be 'vmap' or 'expand', got {batch_mode!r}")
    with peak_backprop(model, lazy=not batched):
        image = image.detach()
        vjp_fn = None
        if batched and batch_mode == "vmap":
            crm, vjp_fn = torch.func.vjp(model.crm, image)
        elif batched:  # "expand": the graph is built per chunk of peaks
            with torch.no_grad():
                crm = model.crm(image)
        else:
            image.requires_grad_(True)
            crm = model.crm(image)
        if peaks is None and select is not None:
            peaks = select(crm.detach())
        elif peaks is None:
            peaks = crm_peaks(model, crm.detach(), None, class_threshold, peak_threshold)
        peaks = peaks.to(crm.device)
        if len(peaks) == 0:
            grads = image.new_zeros((0,) + tuple(image.shape[1:]))
        elif vjp_fn is not None:
            grads = backprop_peaks_vmap(vjp_fn, crm.shape, peaks, chunk=chunk, dtype=crm.dtype)
        elif batched:
            grads = backprop_peaks_expanded(model, image, peaks, chunk=chunk)
        else:
            grads = backprop_peaks(crm, image, peaks)
        prms = normalise_prms(grads)
    return peaks, prms.detach(), crm.detach()[0]


class _StackedCRM(nn.Module):
    """``net.crm`` as a module's forward, so that ``functional_call`` can run it with other weights."""

    def __init__(self, net: PRMNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.crm(images)


PeakSelector = Callable[[int, PRMNet, torch.Tensor], torch.Tensor]


def stacked_peak_response_maps(models: Sequence[PRMNet], image: torch.Tensor, select: PeakSelector, *,
                               chunk: int = 16) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`peak_response_maps` of several networks of one architecture on the same image
    (1, 3, H, W), batched over the networks as well as the peaks: the weights are stacked
    (``torch.func.stack_module_state``) and vmapped, so the M forward passes are one, and every
    backward pass carries the k-th peak of each network (networks with fewer peaks get a zero
    gradient there). ``select(t, model, crm)`` gives network t's peaks (K_t, 4) from its upsampled
    CRM (1, C, h, w). Returns ``[(peaks, prms, crm (C, h, w))]`` per network, equal to
    ``peak_response_maps(model, image, peaks=...)`` of each (tests)."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"stacked_peak_response_maps takes one image (1, 3, H, W), got {tuple(image.shape)}")
    if len(models) == 0:
        return []
    with ExitStack() as stack:
        for model in models:
            stack.enter_context(peak_backprop(model))
        wrapped = [_StackedCRM(m) for m in models]
        params, buffers = torch.func.stack_module_state(wrapped)
        params = {k: v.detach() for k, v in params.items()}
        base = wrapped[0]

        def crm_of(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(base, (p, b), (x,))

        images = image.detach().expand(len(models), *image.shape)
        crms, vjp_fn = torch.func.vjp(lambda xs: torch.func.vmap(crm_of)(params, buffers, xs), images)
        crms = crms.detach()  # (M, 1, C, h, w)
        peaks = [select(t, m, crms[t]).to(crms.device) for t, m in enumerate(models)]
        slots = max(len(p) for p in peaks)
        grads = [image.new_zeros((len(p),) + tuple(image.shape[1:])) for p in peaks]
        for start in range(0, slots, chunk):
            n = min(chunk, slots - start)
            onehots = crms.new_zeros((n,) + tuple(crms.shape))
            for t, p in enumerate(peaks):
                part = p[start:start + n]
                k = torch.arange(len(part), device=crms.device)
                onehots[k, t, part[:, 0], part[:, 1], part[:, 2], part[:, 3]] = 1
            g, = torch.func.vmap(vjp_fn)(onehots)  # (n, M, 1, 3, H, W)
            for t, p in enumerate(peaks):
                used = max(0, min(n, len(p) - start))
                if used:
                    grads[t][start:start + used] = g[:used, t, 0]
    return [(p, normalise_prms(g).detach(), crms[t, 0]) for t, (p, g) in enumerate(zip(peaks, grads))]

