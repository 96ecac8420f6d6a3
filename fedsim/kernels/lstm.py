"""LSTMs built for speed and per-example gradients.

BPTT is written out by hand, and structured dropout shrinks the GEMMs that consume the
dropped units. One autograd function per layer runs the recurrence and keeps the gate gradients of
every time step at hand.

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

from fedsim.kernels.gathered import draw_keep_masks, gathered_linear
from fedsim.kernels.linear import seq_norm_sq, seq_weighted_sum
from fedsim.kernels.registry import Kernel, Record, register_kernel, set_grad


class _Recurrence(torch.autograd.Function):
    """The recurrent part of one LSTM layer, given the input projections of all steps.

    The forward pass stores each step's activated gates and their derivative factors,
    so the backward pass is a few elementwise ops and one GEMM per step, on contiguous
    time-major slices. In capture mode it records ``(H_prev, G)`` for the kernel and
    returns no gradient for ``w_hh``.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        gx: torch.Tensor,  # (T, B, 4H) input projections plus both biases
        h0: torch.Tensor,  # (B, H)
        c0: torch.Tensor,  # (B, H)
        w_hh: torch.Tensor,  # (4H, H)
        capture: dict[str, Any] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t, b, _ = gx.shape
        hid = w_hh.shape[1]
        hs = gx.new_empty(t + 1, b, hid)  # hs[0] = h0, hs[s + 1] = h after step s
        cs = gx.new_empty(t + 1, b, hid)
        tcs = gx.new_empty(t, b, hid)  # tanh(c_t)
        acts = gx.new_empty(t, b, 4 * hid)  # activated gates i, f, g, o
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
        ctx.save_for_backward(w_hh, hs, cs, tcs, acts, dact, oq)
        ctx.capture = capture  # type: ignore[attr-defined]
        return hs[1:].transpose(0, 1), hs[t].clone(), cs[t].clone()

    @staticmethod
    def backward(
        ctx: Any, d_hs: torch.Tensor, d_ht: torch.Tensor, d_ct: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        w_hh, hs, cs, tcs, acts, dact, oq = ctx.saved_tensors
        t, b, _ = acts.shape
        hid = w_hh.shape[1]
        d_hs_t = d_hs.transpose(0, 1)  # (T, B, H)
        dg_all = acts.new_empty(t, b, 4 * hid)  # gate pre-activation gradients
        buf = acts.new_empty(b, 4 * hid)
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
        capture = ctx.capture
        if capture is not None:
            # Per-example kernels want (B, T, ·) views.
            capture["hprev"], capture["dg"] = hs[:-1].transpose(0, 1), dg_all.transpose(0, 1)
            dw_hh = None
        else:
            dw_hh = dg_all.view(t * b, -1).t() @ hs[:-1].reshape(t * b, -1)
        return dg_all, dh, dc, dw_hh, None


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
                x_in = out if mask is None else out * mask * scale
                h0, c0 = state[0][k : k + 1], state[1][k : k + 1]
                out, h, c = torch.lstm(
                    x_in,
                    (h0.contiguous(), c0.contiguous()),
                    [w_ih, w_hh, b_ih, b_hh],
                    True,
                    1,
                    0.0,
                    self.training,
                    False,
                    True,
                )
                h_n.append(h[0])
                c_n.append(c[0])
                continue
            bias = b_ih + b_hh
            mask = keep_in if k == 0 else (None if keep is None else keep[k - 1])
            if mask is None:
                gx = torch.addmm(bias, out.transpose(0, 1).reshape(t * b, -1), w_ih.t())
                gx = gx.view(t, b, -1)
                x_eff = out
            elif self.per_element:
                x_eff = out * mask * scale
                gx = torch.addmm(bias, x_eff.transpose(0, 1).reshape(t * b, -1), w_ih.t())
                gx = gx.view(t, b, -1)
            else:  # structured: only the kept columns of each step enter the GEMMs
                gx = gathered_linear(out, mask, w_ih, bias, scale)
                x_eff = out * mask * scale if capture is not None else out
            if capture is not None:
                capture["x"] = x_eff.detach()
            seq, h, c = _Recurrence.apply(gx, state[0][k], state[1][k], w_hh, capture)
            h_n.append(h)
            c_n.append(c)
            out = seq
        if keep is not None:
            out = out * keep[-1] * scale
        return out, (torch.stack(h_n), torch.stack(c_n))


class LSTM(StructuredDropoutLSTM):
    """Drop-in for ``nn.LSTM(batch_first=True)`` (unidirectional, no projections)."""

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = True
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, 0.0, batch_first)


@register_kernel(StructuredDropoutLSTM, LSTM)
class LSTMKernel(Kernel):
    """Per-example norms of every layer's four parameters from the captured BPTT terms.

    Layer k's weights are sequence-Linear cases: ``W_ih`` sees the (dropped) input
    ``X̃_k`` and ``W_hh`` the previous hidden states, both against the gate gradients
    ``G_k``; each bias gets ``Σ_t G_k``.
    """

    captures_itself = True

    def _layers(self, record: Record) -> dict[int, dict[str, torch.Tensor]]:
        return record.cache.get("layers", {})  # type: ignore[no-any-return]

    def norm_sq(self, module: nn.Module, record: Record) -> torch.Tensor:
        """``‖G_iᵀX̃_i‖² + ‖G_iᵀH_i‖² + 2‖Σ_t G_it‖²`` summed over layers."""
        total: torch.Tensor | int = 0
        for k, rec in self._layers(record).items():
            x, hprev, dg = rec["x"], rec["hprev"], rec["dg"]
            bias = dg.sum(1).pow(2).sum(1)
            ih = seq_norm_sq(x, dg, record.cache, f"ih{k}")
            total = total + ih + seq_norm_sq(hprev, dg, record.cache, f"hh{k}") + 2 * bias
        assert isinstance(total, torch.Tensor), "LSTM ran no layer in capture mode"
        return total

    def accumulate(self, module: nn.Module, record: Record, coef: torch.Tensor) -> None:
        """Clipped sums as three GEMM-shaped contractions per layer."""
        assert isinstance(module, StructuredDropoutLSTM)
        for k, rec in self._layers(record).items():
            x, hprev, dg = rec["x"], rec["hprev"], rec["dg"]
            w_ih, w_hh, b_ih, b_hh = module.layer_params(k)
            set_grad(w_ih, seq_weighted_sum(x, dg, coef, record.cache, f"ih{k}"))
            set_grad(w_hh, seq_weighted_sum(hprev, dg, coef, record.cache, f"hh{k}"))
            db = coef @ dg.sum(1)
            set_grad(b_ih, db)
            set_grad(b_hh, db.clone())
