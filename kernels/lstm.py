"""An LSTM built for per-example gradients: BPTT written out by hand.

One autograd function per layer keeps the gate gradients of every time step at hand.

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
from torch.autograd.function import FunctionCtx

from fedsim.kernels.linear import seq_norm_sq, seq_weighted_sum
from fedsim.kernels.registry import Kernel, Record, register_kernel, set_grad


class _LSTMLayer(torch.autograd.Function):
    """One LSTM layer over a whole sequence (batch first in and out, time major inside).

    The forward pass stores each step's activated gates and their derivative factors,
    so the backward pass is a few elementwise ops and one GEMM per step, on contiguous
    time-major slices.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,  # (B, T, I)
        h0: torch.Tensor,  # (B, H)
        c0: torch.Tensor,  # (B, H)
        w_ih: torch.Tensor,  # (4H, I)
        w_hh: torch.Tensor,  # (4H, H)
        b_ih: torch.Tensor,  # (4H,)
        b_hh: torch.Tensor,  # (4H,)
        capture: tuple[Record, int] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        hid = w_hh.shape[1]
        xt = x.transpose(0, 1).reshape(t * b, -1)  # (T·B, I), time major
        # Input projections of all steps at once: one GEMM instead of T small ones.
        gx = torch.addmm(b_ih + b_hh, xt, w_ih.t()).view(t, b, 4 * hid)
        hs = x.new_empty(t + 1, b, hid)  # hs[0] = h0, hs[s + 1] = h after step s
        cs = x.new_empty(t + 1, b, hid)
        tcs = x.new_empty(t, b, hid)  # tanh(c_t)
        acts = x.new_empty(t, b, 4 * hid)  # activated gates i, f, g, o
        hs[0], cs[0] = h0, c0
        w_hh_t = w_hh.t()
        for s in range(t):  # only what the recurrence needs happens step by step
            gates = torch.addmm(gx[s], hs[s], w_hh_t)  # (B, 4H) pre-activations
            act = torch.sigmoid(gates, out=acts[s])
            torch.tanh(gates[:, 2 * hid : 3 * hid], out=act[:, 2 * hid : 3 * hid])
            i, f, g, o = act.chunk(4, 1)
            torch.addcmul(f * cs[s], i, g, out=cs[s + 1])
            torch.mul(o, torch.tanh(cs[s + 1], out=tcs[s]), out=hs[s + 1])
        # Derivative factors for the backward pass, for all steps at once (big ops).
        dact = acts * (1 - acts)  # sigmoid' for i, f, o: (T, B, 4H)
        g_all = acts[..., 2 * hid : 3 * hid]
        dact[..., 2 * hid : 3 * hid] = 1 - g_all * g_all  # tanh' for g
        oq = acts[..., 3 * hid :] * (1 - tcs * tcs)  # o · tanh'(c) = dc_t/dh_t: (T, B, H)
        ctx.save_for_backward(x, w_ih, w_hh, hs, cs, tcs, acts, dact, oq)
        ctx.capture = capture  # type: ignore[attr-defined]
        return hs[1:].transpose(0, 1), hs[t].clone(), cs[t].clone()

    @staticmethod
    def backward(
        ctx: Any, d_hs: torch.Tensor, d_ht: torch.Tensor, d_ct: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, w_ih, w_hh, hs, cs, tcs, acts, dact, oq = ctx.saved_tensors
        b, t, _ = x.shape
        hid = w_hh.shape[1]
        d_hs_t = d_hs.transpose(0, 1)  # (T, B, H)
        dg_all = x.new_empty(t, b, 4 * hid)  # gate pre-activation gradients, time major
        buf = x.new_empty(b, 4 * hid)
        bi, bf, bg, bo = buf.chunk(4, 1)
        dh = d_ht.clone()
        dc = d_ct.clone()
        for s in reversed(range(t)):
            i, f, g, _ = acts[s].chunk(4, 1)
            dh += d_hs_t[s]
            dc.addcmul_(dh, oq[s])
            torch.mul(dc, g, out=bi)
            torch.mul(dc, cs[s], out=bf)  # c_{t-1}
            torch.mul(dc, i, out=bg)
            torch.mul(dh, tcs[s], out=bo)
            torch.mul(buf, dact[s], out=dg_all[s])
            dc = dc * f
            dh = torch.mm(dg_all[s], w_hh)  # (B, H)
        flat = dg_all.view(t * b, -1)  # (T·B, 4H)
        dx = (flat @ w_ih).view(t, b, -1).transpose(0, 1) if ctx.needs_input_grad[0] else None
        if ctx.capture is not None:
            record, layer = ctx.capture
            layers = record.cache.setdefault("layers", {})
            # Per-example kernels want (B, T, ·) views.
            layers[layer] = (x, hs[:-1].transpose(0, 1), dg_all.transpose(0, 1))
            return dx, dh, dc, None, None, None, None, None
        dw_ih = flat.t() @ x.transpose(0, 1).reshape(t * b, -1)
        dw_hh = flat.t() @ hs[:-1].reshape(t * b, -1)
        db = flat.sum(0)
        return dx, dh, dc, dw_ih, dw_hh, db, db.clone(), None


class LSTM(nn.Module):
    """Drop-in for ``nn.LSTM(batch_first=True)`` (no projections, unidirectional).

    Parameters
    ----------
    input_size, hidden_size : int
        Feature sizes.
    num_layers : int
        Stacked layers.
    batch_first : bool
        Only ``True`` is supported (inputs are (B, T, I)).
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = True
    ) -> None:
        super().__init__()
        if not batch_first:
            raise ValueError("fedsim.kernels.LSTM supports batch_first=True only")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first = True
        for k in range(num_layers):
            fan_in = input_size if k == 0 else hidden_size
            self.register_parameter(
                f"weight_ih_l{k}", nn.Parameter(torch.empty(4 * hidden_size, fan_in))
            )
            self.register_parameter(
                f"weight_hh_l{k}", nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
            )
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(4 * hidden_size)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(4 * hidden_size)))
        self.dp_capture: Record | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)), as ``nn.LSTM``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def layer_params(self, k: int) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter, nn.Parameter]:
        """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of layer ``k``."""
        return tuple(
            getattr(self, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )

    def layer_input(self, k: int, out: torch.Tensor) -> torch.Tensor:
        """What layer ``k`` + 1 receives from layer ``k``'s output (identity here)."""
        return out

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Return ``(output (B, T, H), (h_n, c_n))`` with ``h_n`` of shape (L, B, H)."""
        b = x.shape[0]
        if state is None:
            zeros = x.new_zeros(self.num_layers, b, self.hidden_size)
            state = (zeros, zeros)
        h_n, c_n = [], []
        out = x
        for k in range(self.num_layers):
            capture = None if self.dp_capture is None else (self.dp_capture, k)
            seq, h, c = _LSTMLayer.apply(
                out, state[0][k], state[1][k], *self.layer_params(k), capture
            )
            h_n.append(h)
            c_n.append(c)
            out = self.layer_input(k, seq)
        return out, (torch.stack(h_n), torch.stack(c_n))


@register_kernel(LSTM)
class LSTMKernel(Kernel):
    """Per-example norms of every layer's four parameters from the captured BPTT terms."""

    captures_itself = True

    def _layers(self, record: Record) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return record.cache.get("layers", {})  # type: ignore[no-any-return]

    def norm_sq(self, module: nn.Module, record: Record) -> torch.Tensor:
        """``‖G_iᵀX_i‖² + ‖G_iᵀHprev_i‖² + 2‖Σ_t G_it‖²`` summed over layers."""
        total: torch.Tensor | int = 0
        for k, (x, hprev, dg) in self._layers(record).items():
            bias = dg.sum(1).pow(2).sum(1)
            total = (
                total
                + seq_norm_sq(x, dg, record.cache, f"ih{k}")
                + seq_norm_sq(hprev, dg, record.cache, f"hh{k}")
                + 2 * bias
            )
        assert isinstance(total, torch.Tensor), "LSTM ran no layer in capture mode"
        return total

    def accumulate(self, module: nn.Module, record: Record, coef: torch.Tensor) -> None:
        """Clipped sums as three GEMM-shaped contractions per layer."""
        assert isinstance(module, LSTM)
        for k, (x, hprev, dg) in self._layers(record).items():
            w_ih, w_hh, b_ih, b_hh = module.layer_params(k)
            set_grad(w_ih, seq_weighted_sum(x, dg, coef, record.cache, f"ih{k}"))
            set_grad(w_hh, seq_weighted_sum(hprev, dg, coef, record.cache, f"hh{k}"))
            db = coef @ dg.sum(1)
            set_grad(b_ih, db)
            set_grad(b_hh, db.clone())
