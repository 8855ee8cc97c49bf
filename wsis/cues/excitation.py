"""Excitation backprop (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016)
through a proposal head: the marginal winning probability (MWP) of every RoI-pooled feature.

The backward rule is the winner-take-all rule of peak backpropagation (:mod:`wsis.cues.peak_backprop`,
whose :func:`~wsis.cues.peak_backprop.peak_backprop` context gives it to every conv and, with
``linear=True``, every fully connected layer): a unit passes its probability to its inputs in
proportion to ``x'_i relu(w_ij)``, ``x' = x - min(x)``. For ReLU inputs with a zero among them
(fc7 after fc6, say) the shift is zero and this is Excitation BP exactly; for features that can be
negative (a linear projection ends each EfficientNet block), the shift is what makes the
probabilities non-negative -- PRM's reason for it too.

The head acts on each proposal's pooled features alone, so the MWPs of all P proposals come from
one backward pass whose output gradient is each proposal's own class activation vector (one-hot
at its class, carrying that class's softmax probability: Label-PEnet's ``a_i^{c,1}``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from wsis.cues.peak_backprop import peak_backprop


def excitation_maps(head: nn.Module, logits_of: Callable[[torch.Tensor], torch.Tensor], pooled: torch.Tensor,
                    classes: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """MWPs (P, h, w) of ``pooled`` (P, D, h, w) RoI features, summed over the D channels.

    ``logits_of(pooled) -> (P, C)`` runs ``head`` (the modules whose layers get the rule: its
    convs and fully connected layers); proposal i's top-down signal is ``activation[i]`` at class
    ``classes[i]`` and 0 elsewhere. The rule is linear in that signal, so a proposal's map sums to
    (about) its activation."""
    if len(pooled) == 0:
        return pooled.new_zeros((0,) + tuple(pooled.shape[2:]))
    with torch.enable_grad(), peak_backprop(head, lazy=True, linear=True):
        x = pooled.detach().clone().requires_grad_(True)
        logits = logits_of(x)
        signal = torch.zeros_like(logits)
        signal[torch.arange(len(x), device=x.device), classes] = activation.to(logits.dtype)
        grad, = torch.autograd.grad(logits, x, signal)
    return grad.sum(dim=1).detach()
