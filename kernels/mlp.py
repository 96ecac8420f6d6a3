"""The cross-entropy gradient of a plain MLP, computed without autograd.

For the small MLPs of simulated clients, autograd's fixed costs (building the graph in
the forward pass, then running its engine: ~150 µs per backward call on a 2-core
machine) exceed the arithmetic. For a stack of ``Flatten``/``Linear``/``ReLU`` layers
under the mean cross-entropy the backward pass is a handful of matrix products, written
out here (``δ_L = (softmax(z_L) - onehot(y)) / B``; ``∇W_i = δ_iᵀ a_{i-1}``,
``∇b_i = Σ δ_i``, ``δ_{i-1} = (δ_i W_i) ⊙ [z_{i-1} > 0]``). The result equals
autograd's up to floating-point rounding (tests compare the two).
"""

from __future__ import annotations

import torch
from torch import nn

_PASS_THROUGH = (nn.Flatten, nn.Identity)


def mlp_linears(model: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of ``model`` if it is a plain MLP, else None.

    A plain MLP here is an ``nn.Sequential`` of ``Linear`` layers with a ``ReLU``
    between consecutive ones, optionally led by ``Flatten`` (``Identity`` anywhere),
    ending with a ``Linear`` (the logits) and holding no buffers. Anything else (dropout,
    normalisation, other activations, a nested Sequential) is not one.
    """
    if type(model) is not nn.Sequential or any(True for _ in model.buffers()):
        return None
    linears: list[nn.Linear] = []
    relu_pending = False  # a ReLU has been seen since the last Linear
    for i, layer in enumerate(model):
        if type(layer) in _PASS_THROUGH:
            if isinstance(layer, nn.Flatten) and (i != 0 or layer.start_dim != 1):
                return None
        elif type(layer) is nn.ReLU:
            if not linears or relu_pending:
                return None
            relu_pending = True
        elif type(layer) is nn.Linear:
            if linears and not relu_pending:
                return None
            linears.append(layer)
            relu_pending = False
        else:
            return None
    return linears if linears and not relu_pending else None


def mlp_cross_entropy_grad(
    linears: list[nn.Linear], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Set ``p.grad`` to the gradient of the batch's mean cross-entropy; return the losses.

    Parameters
    ----------
    linears : list of nn.Linear
        The MLP's layers, from :func:`mlp_linears`.
    x : Tensor
        Inputs, (B, ...) (flattened to (B, d)).
    y : Tensor
        Class targets, (B,) int64.

    Returns
    -------
    Tensor
        Per-example losses, (B,), not part of any graph.

    Parameters that do not require gradients are left as they are.
    """
    with torch.no_grad():
        acts = [x.reshape(len(x), -1)]  # each Linear's input
        pre: list[torch.Tensor] = []  # each hidden Linear's output, before its ReLU
        for layer in linears[:-1]:
            z = _linear(layer, acts[-1])
            pre.append(z)
            acts.append(z.clamp_min(0))
        log_probs = torch.log_softmax(_linear(linears[-1], acts[-1]), dim=1)
        targets = y.unsqueeze(1)
        losses = log_probs.gather(1, targets).squeeze(1).neg_()
        delta = log_probs.exp_()  # softmax, in place: log_probs is not needed again
        delta.scatter_add_(1, targets, torch.full_like(targets, -1, dtype=delta.dtype))
        delta.div_(len(y))
        for i in range(len(linears) - 1, -1, -1):
            layer = linears[i]
            if layer.weight.requires_grad:
                layer.weight.grad = delta.t().mm(acts[i])
            if layer.bias is not None and layer.bias.requires_grad:
                layer.bias.grad = delta.sum(0)
            if i:
                delta = delta.mm(layer.weight).masked_fill_(pre[i - 1] <= 0, 0.0)
    return losses


def _linear(layer: nn.Linear, a: torch.Tensor) -> torch.Tensor:
    if layer.bias is None:
        return a.mm(layer.weight.t())
    return torch.addmm(layer.bias, a, layer.weight.t())
