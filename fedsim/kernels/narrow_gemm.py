"""GEMMs of few rows (one time step's batch), run by the CPU library that is fastest at them.

Structured dropout's gathered GEMMs and an LSTM's recurrence multiply only B rows (64 at
PTB-medium) per time step, each step against its own weight slice or the same recurrent
weight. On this project's CPU (AMD EPYC, AVX-512), oneDNN's matmul (the kernel torch's
own CPU compiler emits for linear layers, ``torch.ops.mkldnn._linear_pointwise``) ran
these narrow GEMMs at 0.6-0.8 of the CPU time MKL's ``sgemm`` (``torch.addmm``) took,
while both ran the one (B·T)-row GEMM of a dense layer alike (docs/benchmarks.md). A
weight that every step reuses is reordered into oneDNN's layout once
(:func:`pack_weight`).

oneDNN has no float64 matmul: float64 (the exactness tests), other devices and empty
operands take ``torch.addmm``. Both compute the same product; only rounding differs.
"""

from __future__ import annotations

import torch


def _onednn_ready() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


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
    """``x @ weightᵀ + bias + add`` for a narrow ``x``, outside autograd.

    Parameters
    ----------
    x : Tensor
        (rows, in) inputs.
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
    out = x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())
    return out if add is None else out.add_(add)
