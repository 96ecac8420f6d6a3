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
                delta = _relu_backward(delta.mm(layer.weight), pre[i - 1])
    return losses


def _linear(layer: nn.Linear, a: torch.Tensor) -> torch.Tensor:
    if layer.bias is None:
        return a.mm(layer.weight.t())
    return torch.addmm(layer.bias, a, layer.weight.t())


def stacked_mlp_cross_entropy_grad(
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor]:
    """:func:`mlp_cross_entropy_grad` for K MLPs at once, each on its own batch.

    Parameters
    ----------
    weights, biases : lists of Tensor
        Layer by layer, the K models' stacked weights (K, out, in) and biases (K, out)
        (None: a layer without bias).
    x : Tensor
        Inputs, (K, B, ...) (flattened to (K, B, d)).
    y : Tensor
        Class targets, (K, B) int64.
    scale : Tensor
        (K, B): each example's weight in its model's loss (``1 / batch`` for a real
        example, 0 for padding), so models with shorter batches pad them.

    Returns
    -------
    tuple
        The gradients of ``Σ_b scale·loss`` per model (weights, biases, stacked as the
        parameters) and the per-example losses (K, B). The same algebra as the single
        model's kernel, with batched matrix products.
    """
    with torch.no_grad():
        acts = [x.reshape(x.shape[0], x.shape[1], -1)]
        pre: list[torch.Tensor] = []
        for w, b in zip(weights[:-1], biases[:-1], strict=True):
            z = _stacked_linear(w, b, acts[-1])
            pre.append(z)
            acts.append(z.clamp_min(0))
        # The logits class-major, (K, classes, B): torch's CPU softmax kernels vectorise
        # along the innermost dimension, and over a last dimension of 10 classes (shorter
        # than one AVX-512 register) they run ~15x slower than along the batch.
        w_last, b_last = weights[-1], biases[-1]
        logits = torch.bmm(w_last, acts[-1].transpose(1, 2))
        if b_last is not None:
            logits.add_(b_last.unsqueeze(2))
        log_probs = torch.log_softmax(logits, dim=1)
        targets = y.unsqueeze(1)
        losses = log_probs.gather(1, targets).squeeze(1).neg_()
        delta = log_probs.exp_()  # (K, classes, B)
        delta.scatter_add_(1, targets, torch.full_like(targets, -1, dtype=delta.dtype))
        delta.mul_(scale.unsqueeze(1))
        last = len(weights) - 1
        w_grads: list[torch.Tensor] = [torch.empty(0)] * len(weights)
        b_grads: list[torch.Tensor | None] = [None] * len(weights)
        w_grads[last] = torch.bmm(delta, acts[last])
        if b_last is not None:
            b_grads[last] = delta.sum(2)
        if last:
            delta = _relu_backward(torch.bmm(delta.transpose(1, 2), w_last), pre[last - 1])
        for i in range(last - 1, -1, -1):  # delta is (K, B, out) from here on
            w_grads[i] = torch.bmm(delta.transpose(1, 2), acts[i])
            if biases[i] is not None:
                b_grads[i] = delta.sum(1)
            if i:
                delta = _relu_backward(torch.bmm(delta, weights[i]), pre[i - 1])
    return w_grads, b_grads, losses


def _relu_backward(grad: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """``grad`` where the ReLU's input ``pre`` was positive, else 0.

    ATen's ReLU backward kernel: a boolean-mask ``masked_fill_`` costs ~25x as much on
    the CPU for the same result.
    """
    out: torch.Tensor = torch.ops.aten.threshold_backward(grad, pre, 0.0)
    return out


def _stacked_linear(w: torch.Tensor, b: torch.Tensor | None, a: torch.Tensor) -> torch.Tensor:
    if b is None:
        return torch.bmm(a, w.transpose(1, 2))
    return torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2))
