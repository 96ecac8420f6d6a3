"""GEMMs routed to the CPU library and operand orientation that run them fastest.

On this project's CPU (AMD EPYC, AVX-512) the same product took very different times
by route (CPU seconds, docs/benchmarks.md):

* narrow GEMMs, the B rows (64 at PTB-medium) of one time step that structured dropout's
  gathered columns and an LSTM's recurrence multiply, ran in oneDNN's matmul
  (``torch.ops.mkldnn._linear_pointwise``, the kernel torch's own CPU compiler emits for
  linear layers) at 0.6-0.8 of the time MKL's ``sgemm`` (``torch.addmm``) took;
* a weight gradient ``dᵀ x`` took MKL about 1.4x as long as the same numbers computed
  as ``(xᵀ d)ᵀ``, and a data gradient ``d W`` about 1.4x as long as oneDNN did it. Both
  are what ``nn.Linear``'s backward runs; :func:`dense_linear` takes the faster routes.

A weight that every step reuses is reordered into oneDNN's layout once
(:func:`pack_weight`). oneDNN has no float64 matmul: float64 (the exactness tests),
other devices and empty operands take ``torch.addmm``. Every route computes the same
product; only the rounding differs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import FunctionCtx


def _onednn_ready() -> bool:
    ops = ("_linear_pointwise", "_reorder_linear_weight")
    return torch.backends.mkldnn.is_available() and all(hasattr(torch.ops.mkldnn, o) for o in ops)


# Whether float32 CPU GEMMs here go to oneDNN (tests switch it off to compare the routes).
ONEDNN = _onednn_ready()
ONEDNN_DTYPES = {torch.float32}  # no float64 matmul in oneDNN


def _onednn(x: torch.Tensor) -> bool:
    # oneDNN refuses empty operands (a step that keeps no unit); torch.addmm takes them.
    return ONEDNN and x.device.type == "cpu" and x.dtype in ONEDNN_DTYPES and x.numel() > 0


def pack_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` (out, in) in the layout :func:`linear_rows` reads fastest, for reuse.

    A weight that many narrow GEMMs share (a recurrence's ``W_hh``, once per time step)
    is reordered once instead of at every call; ``rows`` is the row count of those GEMMs.
    On the ``torch.addmm`` route the weight is returned as it is.
    """
    if _onednn(weight):
        packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        return packed
    return weight


def linear_rows(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ weightᵀ + bias + add`` outside autograd, on the fastest route.

    Parameters
    ----------
    x : Tensor
        (rows, in) inputs, any strides.
    weight : Tensor
        (out, in) as in ``nn.Linear``: any strides (a transposed view is fine), or the
        result of :func:`pack_weight`.
    bias : Tensor or None
        (out,).
    add : Tensor or None
        (rows, out), added to the product inside the GEMM where the library can.

    Returns
    -------
    Tensor
        (rows, out), a new tensor. The oneDNN op has no autograd formula: call this from
        an autograd function's ``forward`` or ``backward``.
    """
    out: torch.Tensor
    if _onednn(x):
        if add is not None:
            out = torch.ops.mkldnn._linear_pointwise.binary(x, add, weight, bias, "add")
        else:
            out = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return out
    if add is not None and bias is None:  # one fused op (a recurrence's every step)
        return torch.addmm(add, x, weight.t())
    out = x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())
    return out if add is None else out.add_(add)


def weight_grad(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``dᵀ x`` (out, in) for inputs ``x`` (N, in) and output gradients ``d`` (N, out).

    Computed as ``(xᵀ d)ᵀ``, the orientation both libraries ran fastest; the result is
    a transposed view.
    """
    return linear_rows(x.t(), d.t()).t()


def column_sums(d: torch.Tensor) -> torch.Tensor:
    """``d.sum(0)`` of a (N, out) matrix, a bias gradient, as a matrix-vector product.

    On the CPU ``sum(0)`` ran on one thread and took twice the time of ``dᵀ 1``.
    """
    return torch.mv(d.t(), d.new_ones(d.shape[0]))


class _DenseLinear(torch.autograd.Function):
    """``nn.Linear``'s product and gradients, each GEMM on its fastest route."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,  # (N, in)
        weight: torch.Tensor,  # (out, in)
        bias: torch.Tensor | None,  # (out,)
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None  # type: ignore[attr-defined]
        return linear_rows(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, d: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        dx = linear_rows(d, weight.t()) if ctx.needs_input_grad[0] else None
        dw = weight_grad(x, d) if ctx.needs_input_grad[1] else None
        db = column_sums(d) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def dense_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with every GEMM, forward and backward, on its fastest route.

    Parameters
    ----------
    x : Tensor
        (..., in); a non-contiguous view is copied once into rows.
    weight, bias : Tensor
        As in ``nn.Linear`` ((out, in) and (out,)).

    Returns
    -------
    Tensor
        (..., out), contiguous.
    """
    lead = x.shape[:-1]
    out = _DenseLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.view(*lead, weight.shape[0])  # type: ignore[no-any-return]
