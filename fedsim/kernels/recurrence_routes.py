"""How fedsim's LSTM runs a layer's recurrence: routes by name, chosen per device type.

Two tables pick a route by ``torch.device.type``: :data:`DP_RECURRENCE` for DP passes,
:data:`LOOP_RECURRENCE` for layers that run fedsim's own recurrence outside DP passes
(``fused=False``; by default torch's fused LSTM runs them instead).

A DP pass needs every step's gate pre-activation gradients ``G`` (T, B, 4H) and the
previous hidden states for the per-example kernel (:class:`~fedsim.kernels.lstm.LSTMKernel`).
Three routes deliver them, all exact:

* ``step-loop``: fedsim's :class:`~fedsim.kernels.recurrence.Recurrence`, a Python loop
  over time steps forward and backward (the CPU's route: measured fastest there).
* ``fused-forward``: torch's fused LSTM runs the forward recurrence, the BPTT terms are
  rebuilt in bulk (one GEMM over all steps, one op a step for the cell state), and the
  backward pass is still the step loop. On this project's 2-core CPU it measured slower
  than ``step-loop`` (1.9-2.3x against 1.5-2.0x of a non-private step in A/Bs under load).
* ``cudnn-gates``: the whole recurrence, forward and backward, in torch's fused LSTM
  (cuDNN on CUDA) with no step loop in Python at all. The fused kernel hides ``G``, but
  its gradient with respect to its *input* is ``W_ihᵀ G``: fed the input projections
  ``gx`` themselves through an identity input weight, that gradient *is* ``G``, and a
  tensor hook on ``gx`` keeps it. The price is the identity GEMM, (4H)² multiply-adds
  per row forward and backward against the recurrent GEMM's 4H·H: on a GPU a few large
  GEMMs instead of ~7 launches per step (the DP char-LSTM: T = 80, two layers).
  No weight gradient is computed (the weights enter detached): the kernel forms the
  clipped sums from ``G``.
* ``triton``: fedsim's own Triton kernels (:mod:`fedsim.kernels.triton_lstm`), one launch
  forward and one backward, ``G`` written by the backward kernel itself. Optional (the
  ``gpu`` extra); not the default anywhere until measured on a GPU.

:data:`DP_RECURRENCE` maps a device type to its route; a device missing there takes
``step-loop``. Any route runs on any device, so the tests run all of them on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fedsim.kernels.recurrence import Recurrence, fused_layer


@dataclass(frozen=True)
class LayerPass:
    """One LSTM layer of a DP pass.

    Attributes
    ----------
    gx : Tensor
        (T, B, 4H) input projections plus both biases.
    x : Tensor
        (B, T, I) the layer's (dropped) input, detached.
    h0, c0 : Tensor
        (B, H) initial state.
    params : tuple of Tensor
        ``(w_ih, w_hh, b_ih, b_hh)``.
    capture : dict or None
        Where the route leaves ``hprev`` and ``dg`` ((B, T, ·) views) for the kernel; ``None``
        outside DP passes (the weights' gradients are then computed as usual).
    """

    gx: torch.Tensor
    x: torch.Tensor
    h0: torch.Tensor
    c0: torch.Tensor
    params: tuple[torch.Tensor, ...]
    capture: dict[str, Any] | None


# A route returns the hidden states (B, T, H) and the last h and c (B, H).
RecurrenceRoute = Callable[[LayerPass], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def step_loop(layer: LayerPass) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fedsim's hand-written recurrence, step by step."""
    w_hh = layer.params[1]
    return Recurrence.apply(layer.gx, layer.h0, layer.c0, w_hh, layer.capture, None)  # type: ignore[no-any-return]


def fused_forward(layer: LayerPass) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused kernel's forward recurrence; BPTT terms rebuilt in bulk, step-loop backward."""
    state = (layer.h0.unsqueeze(0), layer.c0.unsqueeze(0))
    with torch.no_grad():
        known_h = fused_layer(layer.x, state, 0, layer.params, False)[0]
    w_hh = layer.params[1]
    return Recurrence.apply(layer.gx, layer.h0, layer.c0, w_hh, layer.capture, known_h)  # type: ignore[no-any-return]


def cudnn_gates(layer: LayerPass) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused kernel forward and backward, ``G`` read as the gradient of ``gx``."""
    gx = layer.gx
    if not gx.requires_grad:  # the first layer: nothing upstream needs a gradient
        gx = gx.detach().requires_grad_(True)
    capture = layer.capture
    assert capture is not None, "cudnn-gates serves DP passes only (run_layer checks)"

    def keep(g: torch.Tensor) -> None:
        capture["dg"] = g.transpose(0, 1)  # (B, T, 4H) view of time-major storage

    gx.register_hook(keep)
    eye = torch.eye(gx.shape[2], dtype=gx.dtype, device=gx.device)  # (4H, 4H)
    h0, c0 = layer.h0.unsqueeze(0), layer.c0.unsqueeze(0)  # (1, B, H)
    w_hh = layer.params[1].detach()
    out, h, c = torch.lstm(gx, (h0, c0), [eye, w_hh], False, 1, 0.0, True, False, False)
    # (T, B, H) previous hidden states, stored time major like the step loop's.
    capture["hprev"] = torch.cat((h0.detach(), out[:-1].detach())).transpose(0, 1)
    return out.transpose(0, 1), h[0], c[0]


def triton(layer: LayerPass) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fedsim's Triton kernels (:mod:`fedsim.kernels.triton_lstm`; needs ``triton``)."""
    from fedsim.kernels import triton_lstm  # optional: imported only when chosen

    triton_lstm.require(layer.gx.device.type)
    w_hh = layer.params[1]
    return triton_lstm.TritonRecurrence.apply(layer.gx, layer.h0, layer.c0, w_hh, layer.capture)  # type: ignore[no-any-return]


ROUTES: dict[str, RecurrenceRoute] = {
    "step-loop": step_loop,
    "fused-forward": fused_forward,
    "cudnn-gates": cudnn_gates,
    "triton": triton,
}

# Route by device type (``torch.device.type``); others take ``step-loop``. CUDA runs the
# whole recurrence in cuDNN: its step loop was launch-bound (docs/benchmarks.md, H200:
# the DP LSTM 4.50x and the char-LSTM 4.23x of a non-private step). Not yet measured with
# this route on a GPU.
DP_RECURRENCE: dict[str, str] = {"cuda": "cudnn-gates"}
# Outside DP passes (no gate gradients needed) only these routes apply; ``step-loop``
# everywhere until ``triton`` is measured on a GPU (``benchmarks/structured_dropout.py
# --impls structured-loop --recurrence triton``).
LOOP_ROUTES = ("step-loop", "triton")
LOOP_RECURRENCE: dict[str, str] = {}
DEFAULT_ROUTE = "step-loop"


def run_layer(layer: LayerPass) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``layer`` by its device's route.

    :data:`DP_RECURRENCE` names it when the layer captures (a DP pass), else
    :data:`LOOP_RECURRENCE`.

    Raises
    ------
    ValueError
        A table names a route that does not exist, or one that needs a DP capture.
    """
    device = layer.gx.device.type
    dp = layer.capture is not None
    route = (DP_RECURRENCE if dp else LOOP_RECURRENCE).get(device, DEFAULT_ROUTE)
    choices = tuple(ROUTES) if dp else LOOP_ROUTES
    if route not in choices:
        table = "DP_RECURRENCE" if dp else "LOOP_RECURRENCE"
        raise ValueError(f"{table}[{device!r}] = {route!r}; choose one of {', '.join(choices)}")
    return ROUTES[route](layer)
