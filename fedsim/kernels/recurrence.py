"""The recurrent part of an LSTM layer as one autograd function, BPTT written by hand.

Given the input projections of all steps, :class:`Recurrence` runs the time loop (or,
with the hidden states of a fused forward at hand, rebuilds what BPTT needs in bulk) and
keeps every step's gate pre-activation gradients ``G`` for the per-example kernels of
:mod:`fedsim.kernels.lstm`. :func:`fused_layer` runs a layer through torch's fused LSTM.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import FunctionCtx

from fedsim.kernels.gemm import linear_rows, pack_weight
from fedsim.kernels.row_blocks import run_by_rows


class Recurrence(torch.autograd.Function):
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
        known_h: torch.Tensor | None,  # (B, T, H) hidden states from a fused forward
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the hidden states (B, T, H) and the last ``h`` and ``c`` (B, H)."""
        t, b, _ = gx.shape
        hid = w_hh.shape[1]
        hs = gx.new_empty(t + 1, b, hid)  # hs[0] = h0, hs[s + 1] = h after step s
        cs = gx.new_empty(t + 1, b, hid)
        hs[0], cs[0] = h0, c0
        w_hh_t = w_hh.t()
        # What BPTT multiplies each step's dc or dh by (see :func:`_bptt_factors`).
        fac = gx.new_empty(t, b, 4 * hid)
        oq = gx.new_empty(t, b, hid)
        f_all = gx.new_empty(t, b, hid)
        if known_h is not None:
            # The fused kernel ran the recurrence; what the backward pass needs follows
            # from its hidden states with one GEMM over all steps and bulk elementwise
            # ops, plus the cell recurrence c_t = f_t c_{t-1} + i_t g_t (one op a step).
            hs[1:] = known_h.transpose(0, 1)
            gates = torch.addmm(gx.view(t * b, -1), hs[:-1].view(t * b, hid), w_hh_t)
            acts = torch.sigmoid(gates).view(t, b, 4 * hid)
            torch.tanh(
                gates.view(t, b, 4 * hid)[..., 2 * hid : 3 * hid], out=acts[..., 2 * hid : 3 * hid]
            )
            i_all, f_bulk, g_all, _ = acts.chunk(4, 2)
            ig = i_all * g_all
            for s in range(t):
                torch.addcmul(ig[s], f_bulk[s], cs[s], out=cs[s + 1])
            _bptt_factors(acts, cs[:-1], torch.tanh(cs[1:]), fac, oq, f_all)
        else:

            def steps(rows: slice) -> None:  # only what the recurrence needs, step by step
                n = rows.stop - rows.start
                # Per-step views made once (Python's indexing cost about as much as the
                # elementwise ops of a small step), and this step's buffers, reused.
                gx_s, h_s, c_s = gx[:, rows].unbind(), hs[:, rows].unbind(), cs[:, rows].unbind()
                fac_s, oq_s, f_s = (
                    fac[:, rows].unbind(),
                    oq[:, rows].unbind(),
                    f_all[:, rows].unbind(),
                )
                act, tc = gx.new_empty(n, 4 * hid), gx.new_empty(n, hid)
                act_g = act[:, 2 * hid : 3 * hid]
                i, f, g, o = act.chunk(4, 1)
                w_rows = pack_weight(w_hh, n)  # reordered once for this block's GEMMs
                for s in range(t):
                    gates = linear_rows(h_s[s], w_rows, add=gx_s[s])  # pre-activations
                    # tanh(z) = 2σ(2z) - 1 for g and for c: torch's CPU tanh took 2-3x
                    # the time of these ops together (e.g. 43 against 18 us at 128 x 128).
                    gates[:, 2 * hid : 3 * hid].mul_(2)
                    torch.sigmoid(gates, out=act)
                    act_g.mul_(2).sub_(1)
                    torch.mul(f, c_s[s], out=c_s[s + 1]).addcmul_(i, g)
                    torch.sigmoid(torch.mul(c_s[s + 1], 2, out=tc), out=tc).mul_(2).sub_(1)
                    torch.mul(o, tc, out=h_s[s + 1])
                    # While the step's gates are in cache: measured 4x faster on the CPU
                    # than the same ops over all steps at once, after the loop.
                    _bptt_factors(act, c_s[s], tc, fac_s[s], oq_s[s], f_s[s])

            run_by_rows(steps, b, _step_macs(gx), gx.device)
        ctx.save_for_backward(w_hh, hs, f_all, fac, oq)
        ctx.capture = capture  # type: ignore[attr-defined]
        return hs[1:].transpose(0, 1), hs[t].clone(), cs[t].clone()

    @staticmethod
    def backward(
        ctx: Any, d_hs: torch.Tensor, d_ht: torch.Tensor, d_ct: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        """Backpropagate through time; gradients for ``gx``, ``h0``, ``c0``, ``w_hh``."""
        w_hh, hs, f_all, fac, oq = ctx.saved_tensors
        t, b, four_h = fac.shape
        hid = four_h // 4
        d_hs_t = d_hs.transpose(0, 1)  # (T, B, H)
        dg_all = fac.new_empty(t, b, four_h)  # gate pre-activation gradients
        # (T, B, 3, H) views: the i, f, g gates all scale dc; o scales dh.
        fac3, dg3 = fac.view(t, b, 4, hid)[:, :, :3], dg_all.view(t, b, 4, hid)[:, :, :3]
        dh = d_ht.clone()
        dc = d_ct.clone()

        def steps(rows: slice) -> None:  # dh and dc of the block's rows (dc in place)
            dh_r, dc_r = dh[rows], dc[rows]
            dc3 = dc_r.unsqueeze(1)
            d_hs_s, oq_s, f_s = (
                d_hs_t[:, rows].unbind(),
                oq[:, rows].unbind(),
                f_all[:, rows].unbind(),
            )
            fac3_s, dg3_s = fac3[:, rows].unbind(), dg3[:, rows].unbind()
            fac_o_s, dg_o_s = fac[:, rows, 3 * hid :].unbind(), dg_all[:, rows, 3 * hid :].unbind()
            dg_s = dg_all[:, rows].unbind()
            w_rows = pack_weight(w_hh.t(), rows.stop - rows.start)
            for s in reversed(range(t)):
                dh_r += d_hs_s[s]
                dc_r.addcmul_(dh_r, oq_s[s])
                torch.mul(fac3_s[s], dc3, out=dg3_s[s])
                torch.mul(fac_o_s[s], dh_r, out=dg_o_s[s])
                dc_r.mul_(f_s[s])
                dh_r = linear_rows(dg_s[s], w_rows)  # (rows, H), a new tensor
            dh[rows] = dh_r

        run_by_rows(steps, b, _step_macs(fac), fac.device)
        capture = ctx.capture
        if capture is not None:
            # Per-example kernels want (B, T, ·) views.
            capture["hprev"], capture["dg"] = hs[:-1].transpose(0, 1), dg_all.transpose(0, 1)
            dw_hh = None
        else:
            dw_hh = dg_all.view(t * b, -1).t() @ hs[:-1].reshape(t * b, -1)
        return dg_all, dh, dc, dw_hh, None, None


def _bptt_factors(
    act: torch.Tensor,
    c_prev: torch.Tensor,
    tanh_c: torch.Tensor,
    fac: torch.Tensor,
    oq: torch.Tensor,
    f_keep: torch.Tensor,
) -> None:
    """Fill what BPTT multiplies each step's dc or dh by, for one step or for all.

    ``act`` (..., 4H) holds the activated gates i, f, g, o, ``c_prev`` and ``tanh_c``
    (..., H) the cell states c_{t-1} and tanh(c_t). Then dL/dz_i = dc·g·σ'(z_i),
    dL/dz_f = dc·c_{t-1}·σ'(z_f), dL/dz_g = dc·i·tanh'(z_g), dL/dz_o = dh·tanh(c_t)·σ'(z_o),
    so ``fac`` (..., 4H) gets g·σ'(z_i), c_{t-1}·σ'(z_f), i·tanh'(z_g), tanh(c_t)·σ'(z_o),
    ``oq`` (..., H) gets o·tanh'(c_t) (= dc_t/dh_t) and ``f_keep`` a contiguous f: each
    step of the backward loop is then two multiplies, two accumulations and one GEMM.
    aten's fused activation backwards do it, sigmoid_backward(u, y) = u·y(1-y) and
    tanh_backward(u, y) = u(1-y²), on one contiguous (..., 4H) operand (on the strided
    gate slices the same op ran about ten times slower on the CPU).
    """
    aten = torch.ops.aten
    i, f, g, o = act.chunk(4, -1)
    partner = torch.cat((g, c_prev, i, tanh_c), dim=-1)  # what each gate meets
    aten.sigmoid_backward.grad_input(partner, act, grad_input=fac)  # right for i, f, o
    hid = oq.shape[-1]
    aten.tanh_backward.grad_input(i, g, grad_input=fac[..., 2 * hid : 3 * hid])  # and g
    aten.tanh_backward.grad_input(o, tanh_c, grad_input=oq)
    f_keep.copy_(f)


def _step_macs(like: torch.Tensor) -> int:
    """B·H·4H of a (T, B, 4H) tensor: the multiply-adds of one step's recurrent GEMM."""
    _, b, four_h = like.shape
    return b * four_h * four_h // 4


def fused_layer(
    x: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor],
    k: int,
    params: tuple[torch.Tensor, ...],
    train: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer ``k`` as torch's fused LSTM (oneDNN on the CPU, cuDNN on CUDA): out, h, c."""
    h0, c0 = state[0][k : k + 1].contiguous(), state[1][k : k + 1].contiguous()
    out, h, c = torch.lstm(x, (h0, c0), list(params), True, 1, 0.0, train, False, True)
    return out, h, c
