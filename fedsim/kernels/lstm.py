"""LSTMs built for speed and per-example gradients.

BPTT is written out by hand, and structured dropout shrinks the GEMMs that consume the
dropped units. One autograd function per layer (:class:`~fedsim.kernels.recurrence.Recurrence`)
runs the recurrence and keeps the gate gradients of every time step at hand.

For layer l with inputs ``X`` (B, T, I), previous hidden states ``Hprev`` (B, T, H) and
gate pre-activation gradients ``G`` (B, T, 4H), the weight gradients are single GEMMs
over all positions, ``dW_ih = Gᵀ X`` and ``dW_hh = Gᵀ Hprev``, and example i's are
``G_iᵀ X_i`` and ``G_iᵀ Hprev_i``: the sequence-Linear case of
:mod:`fedsim.kernels.linear`. In capture mode the backward pass stores ``(X, Hprev, G)``
for the kernel and skips the unclipped weight gradients.

Parameters are named and shaped as in ``nn.LSTM`` (gate order i, f, g, o), so state
dicts load either way.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fedsim.kernels.gathered import draw_keep_masks, gathered_linear
from fedsim.kernels.linear import seq_norm_sq, seq_weighted_sum
from fedsim.kernels.recurrence import fused_layer
from fedsim.kernels.recurrence_routes import LayerPass, run_layer
from fedsim.kernels.registry import Kernel, Record, register_kernel, set_grad
from fedsim.kernels.structure_rule import INPUT_GATHER_BY_RULE, structure_pays


class StructuredDropoutLSTM(nn.Module):
    """``nn.LSTM(batch_first=True)`` plus structured dropout on every layer's output.

    Dropout sits on each layer's output: the next layer's input and, for the last
    layer, the module's output; the recurrent connection is never dropped. A keep-mask
    of shape (num_layers, T, hidden_size) is shared by the whole batch and redrawn at
    every time step (Sarma et al. 2021, "structured in space, randomized in time");
    kept units are scaled by ``1/(1-p)``. Because a dropped unit is a whole column of
    the (B, H) activations, the next layer's input GEMMs are computed on the kept
    columns only (:func:`~fedsim.kernels.gathered.gathered_linear`), forward and
    backward; :attr:`last_masks` lets a consumer of the output (an LM decoder) do the
    same. Parameters are named as in ``nn.LSTM``, so state dicts load either way.

    Parameters
    ----------
    input_size, hidden_size : int
        Feature sizes.
    num_layers : int
        Stacked layers.
    dropout : float
        Drop probability p in [0, 1).
    batch_first : bool
        Only ``True`` (inputs are (B, T, I)).
    per_element : bool
        Comparison baseline: ordinary per-element masks (B, T, H) applied densely,
        with the same implementation otherwise.
    dropout_input : bool
        Also drop the first layer's input (an LM's embedding output), with its own
        batch-shared keep-mask (T, input_size) redrawn at every step, as Zaremba et al.
        and the structured-dropout paper's language models do.
    fused : bool
        Outside DP passes, run each layer with torch's fused LSTM kernel (default). With
        ``False`` every layer runs fedsim's step loop and a structurally dropped input
        enters its layer through the gathered GEMM (the path DP passes always take).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        batch_first: bool = True,
        per_element: bool = False,
        fused: bool = True,
        dropout_input: bool = False,
    ) -> None:
        super().__init__()
        if not batch_first:
            raise ValueError("fedsim's LSTM supports batch_first=True only")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.per_element, self.batch_first = dropout, per_element, True
        self.fused, self.dropout_input = fused, dropout_input
        for k in range(num_layers):
            fan_in = input_size if k == 0 else hidden_size
            gates = 4 * hidden_size
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(gates, fan_in)))
            self.register_parameter(
                f"weight_hh_l{k}", nn.Parameter(torch.empty(gates, hidden_size))
            )
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(gates)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(gates)))
        self.dp_capture: Record | None = None
        self.last_masks: torch.Tensor | None = None
        self.last_input_mask: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)), as ``nn.LSTM``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def layer_params(self, k: int) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter, nn.Parameter]:
        """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of layer ``k``."""
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return tuple(getattr(self, f"{n}_l{k}") for n in names)

    def _masks(self, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor | None:
        if not self.training or (self.dropout == 0.0 and masks is None):
            return None
        if masks is not None:
            return masks.to(torch.bool)
        b, t = x.shape[:2]
        if self.per_element:
            return (
                torch.rand(self.num_layers, b, t, self.hidden_size, device=x.device) >= self.dropout
            )
        return draw_keep_masks(self.num_layers, t, self.hidden_size, self.dropout, x.device)

    def _input_mask(self, x: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor | None:
        """Keep-mask of the first layer's input: (T, I), or (B, T, I) when ``per_element``."""
        if not self.training or not self.dropout_input or self.dropout == 0.0:
            return None
        if given is not None:
            return given.to(torch.bool)
        b, t = x.shape[:2]
        if self.per_element:
            return torch.rand(b, t, self.input_size, device=x.device) >= self.dropout
        return draw_keep_masks(1, t, self.input_size, self.dropout, x.device)[0]

    def forward(
        self,
        x: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        masks: torch.Tensor | None = None,
        input_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Return ``(output (B, T, H), (h_n, c_n))``, ``h_n`` of shape (L, B, H).

        ``masks``: boolean keep-masks (num_layers, T, H) to use instead of drawing them
        (training mode only; (num_layers, B, T, H) when ``per_element``); ``input_mask``
        likewise for the first layer's input with ``dropout_input``: (T, I) or (B, T, I).
        """
        b, t = x.shape[:2]
        if state is None:
            zeros = x.new_zeros(self.num_layers, b, self.hidden_size)
            state = (zeros, zeros)
        keep = self._masks(x, masks)
        keep_in = self._input_mask(x, input_mask)
        self.last_masks, self.last_input_mask = keep, keep_in
        scale = 1.0 / (1.0 - self.dropout)
        h_n, c_n = [], []
        out = x  # layer k's input: raw output of layer k-1 (dropped via `keep[k-1]`)
        for k in range(self.num_layers):
            w_ih: torch.Tensor
            b_ih: torch.Tensor
            b_hh: torch.Tensor
            w_ih, w_hh, b_ih, b_hh = self.layer_params(k)
            capture: dict[str, Any] | None = None
            if self.dp_capture is not None:  # clipped sums come from the kernel instead
                capture = self.dp_capture.cache.setdefault("layers", {}).setdefault(k, {})
                w_ih, b_ih, b_hh = w_ih.detach(), b_ih.detach(), b_hh.detach()
            if capture is None and self.fused:
                # Outside a DP pass each layer runs as torch's fused LSTM (oneDNN on CPU),
                # on the dropped input: measured faster on CPU than the step loop with a
                # gathered input GEMM (docs/benchmarks.md). Same math either way.
                mask = keep_in if k == 0 else (None if keep is None else keep[k - 1])
                # One pass over the (B, T, I) input: the small (T, I) factor is built first.
                x_in = out if mask is None else out * (mask * scale).to(out.dtype)
                out, h, c = fused_layer(x_in, state, k, (w_ih, w_hh, b_ih, b_hh), self.training)
                h_n.append(h[0])
                c_n.append(c[0])
                continue
            bias = b_ih + b_hh
            mask = keep_in if k == 0 else (None if keep is None else keep[k - 1])
            if mask is None:
                gx = torch.addmm(bias, out.transpose(0, 1).reshape(t * b, -1), w_ih.t())
                gx = gx.view(t, b, -1)
                x_eff = out
            elif self.per_element or not _gathers_input(out, self.dropout):
                # Per-element masks, or a structured one where gathering does not pay:
                # the masked input through one dense GEMM ((T, H) masks broadcast).
                x_eff = out * mask * scale
                gx = torch.addmm(bias, x_eff.transpose(0, 1).reshape(t * b, -1), w_ih.t())
                gx = gx.view(t, b, -1)
            else:  # structured: only the kept columns of each step enter the GEMMs
                gx = gathered_linear(out, mask, w_ih, bias, scale)
                x_eff = out * mask * scale if capture is not None else out
            if capture is not None:
                capture["x"] = x_eff = x_eff.detach()
            # The recurrence runs by its device's route (recurrence_routes.py).
            params = (w_ih, w_hh, b_ih, b_hh)
            seq, h, c = run_layer(LayerPass(gx, x_eff, state[0][k], state[1][k], params, capture))
            h_n.append(h)
            c_n.append(c)
            out = seq
        if keep is not None:
            out = out * (keep[-1] * scale).to(out.dtype)
        return out, (torch.stack(h_n), torch.stack(c_n))


def _gathers_input(x: torch.Tensor, p: float) -> bool:
    """Whether a step-loop layer's structurally dropped input (B, T, I) is gathered.

    The CPU always gathers it (its measured route; the rule there was calibrated on the
    decoder); devices in :data:`~fedsim.kernels.structure_rule.INPUT_GATHER_BY_RULE` ask
    :func:`~fedsim.kernels.structure_rule.structure_pays`, so a DP pass on CUDA takes the
    batched gather, and its one host synchronisation, only where gathering pays.
    """
    device = x.device.type
    if device not in INPUT_GATHER_BY_RULE:
        return True
    return structure_pays(device, x.shape[0], x.shape[2], p)


class LSTM(StructuredDropoutLSTM):
    """Drop-in for ``nn.LSTM(batch_first=True)`` (unidirectional, no projections)."""

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = True
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, 0.0, batch_first)


@register_kernel(StructuredDropoutLSTM, LSTM)
class LSTMKernel(Kernel):
    """Per-example norms of every layer's four parameters from the captured BPTT terms.

    Both weights of layer k see the same gate gradients ``G_k``: ``W_ih`` against the
    (dropped) input ``X̃_k`` and ``W_hh`` against the previous hidden states. So the
    layer is one sequence-Linear case, the weight ``[W_ih | W_hh]`` on the input
    ``Z_k = [X̃_k, H_k]`` (B, T, I + H), and its route (ghost norm or materialised
    per-example gradients, :func:`~fedsim.kernels.linear.prefer_ghost`) is decided once
    per layer by that shape: a ghost norm computes ``G_k G_kᵀ`` once for both weights
    (and ``Z_k Z_kᵀ`` as the sum of both blocks' Grams, ``Z_k`` is never built), and each
    weight's clipped sum is one GEMM over all positions. Each bias gets ``Σ_t G_k``.
    """

    captures_itself = True

    def _layers(self, record: Record) -> dict[int, dict[str, torch.Tensor]]:
        return record.cache.get("layers", {})  # type: ignore[no-any-return]

    def _g_sum(self, k: int, rec: dict[str, torch.Tensor], cache: dict[str, Any]) -> torch.Tensor:
        """``Σ_t G_k`` (B, 4H): each example's bias gradient, reduced over time once."""
        key = f"gsum{k}"
        if key not in cache:
            # The captured G is a (B, T, 4H) view of time-major storage: reduce over
            # the leading storage axis (summing over dim 1 of the view ran 10x slower).
            cache[key] = rec["dg"].transpose(0, 1).sum(0)
        return cache[key]  # type: ignore[no-any-return]

    def norm_sq(self, module: nn.Module, record: Record) -> torch.Tensor:
        """``‖G_iᵀ[X̃_i, H_i]‖² + 2‖Σ_t G_it‖²`` summed over layers."""
        total: torch.Tensor | int = 0
        for k, rec in self._layers(record).items():
            dg = rec["dg"]
            bias = self._g_sum(k, rec, record.cache).pow(2).sum(1)
            parts = (rec["x"], rec["hprev"])
            total = total + seq_norm_sq(parts, dg, record.cache, f"w{k}") + 2 * bias
        assert isinstance(total, torch.Tensor), "LSTM ran no layer in capture mode"
        return total

    def accumulate(self, module: nn.Module, record: Record, coef: torch.Tensor) -> None:
        """Clipped sums: one GEMM-shaped contraction per layer, split into both weights."""
        assert isinstance(module, StructuredDropoutLSTM)
        for k, rec in self._layers(record).items():
            dg = rec["dg"]
            w_ih, w_hh, b_ih, b_hh = module.layer_params(k)
            parts = (rec["x"], rec["hprev"])
            dw_ih, dw_hh = seq_weighted_sum(parts, dg, coef, record.cache, f"w{k}")
            set_grad(w_ih, dw_ih)
            set_grad(w_hh, dw_hh)
            db = coef @ self._g_sum(k, rec, record.cache)
            set_grad(b_ih, db)
            set_grad(b_hh, db.clone())
