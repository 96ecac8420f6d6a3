"""The recurrent part of an LSTM layer as one autograd function, BPTT written by hand.

Given the input projections of all steps, :class:`Recurrence` runs the time loop (or,
with the hidden states of a fused forward at hand, rebuilds what BPTT needs in bulk) and
keeps every step's gate pre-activation gradients ``G`` for the per-example kernels of
:mod:`fedsim.kernels.lstm`. :func:`fused_layer` runs a layer through torch's fused LSTM.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.autograd.function import FunctionCtx

from fedsim.kernels.gemm import linear_rows, pack_weight


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
            i_all, f_all, g_all, _ = acts.chunk(4, 2)
            ig = i_all * g_all
            for s in range(t):
                torch.addcmul(ig[s], f_all[s], cs[s], out=cs[s + 1])
            tcs = torch.tanh(cs[1:])  # tanh(c_t)
        else:
            tcs = gx.new_empty(t, b, hid)
            acts = gx.new_empty(t, b, 4 * hid)  # activated gates i, f, g, o
            w_packed = pack_weight(w_hh, b)
            with _one_thread(gx):
                for s in range(t):  # only what the recurrence needs happens step by step
                    gates = linear_rows(hs[s], w_packed, add=gx[s])  # (B, 4H) pre-activations
                    act = torch.sigmoid(gates, out=acts[s])
                    torch.tanh(gates[:, 2 * hid : 3 * hid], out=act[:, 2 * hid : 3 * hid])
                    i, f, g, o = act.chunk(4, 1)
                    torch.mul(f, cs[s], out=cs[s + 1]).addcmul_(i, g)
                    torch.mul(o, torch.tanh(cs[s + 1], out=tcs[s]), out=hs[s + 1])
        # What the backward pass multiplies each step's dc or dh by, for all steps at once
        # (big ops): dL/dz_i = dc·g·σ'(z_i), dL/dz_f = dc·c_{t-1}·σ'(z_f),
        # dL/dz_g = dc·i·tanh'(z_g), dL/dz_o = dh·tanh(c_t)·σ'(z_o). So each step of the
        # backward loop is two multiplies, two accumulations and one GEMM.
        # aten's fused activation backwards: sigmoid_backward(u, y) = u·y(1-y) and
        # tanh_backward(u, y) = u(1-y²), one pass each over (T, B, H).
        # On contiguous (T, B, 4H) operands: on the gate slices (strided) the same op ran
        # about ten times slower on the CPU.
        i_all, f_all, g_all, o_all = acts.chunk(4, 2)
        aten = torch.ops.aten
        partner = torch.cat((g_all, cs[:-1], i_all, tcs), dim=2)  # what each gate meets
        fac = aten.sigmoid_backward(partner, acts)  # right for i, f, o
        fac[..., 2 * hid : 3 * hid] = aten.tanh_backward(i_all, g_all)  # and g
        oq = aten.tanh_backward(o_all, tcs)  # o · tanh'(c) = dc_t/dh_t: (T, B, H)
        ctx.save_for_backward(w_hh, hs, f_all.contiguous(), fac, oq)
        ctx.capture = capture  # type: ignore[attr-defined]
        return hs[1:].transpose(0, 1), hs[t].clone(), cs[t].clone()

    @staticmethod
    def backward(
        ctx: Any, d_hs: torch.Tensor, d_ht: torch.Tensor, d_ct: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        """Backpropagate through time; gradients for ``gx``, ``h0``, ``c0``, ``w_hh``."""
        w_hh, hs, f_all, fac, oq = ctx.saved_tensors
        t, b, four_h = fac.shape
        w_packed = pack_weight(w_hh.t(), b)
        hid = four_h // 4
        d_hs_t = d_hs.transpose(0, 1)  # (T, B, H)
        dg_all = fac.new_empty(t, b, four_h)  # gate pre-activation gradients
        # (T, B, 3, H) views: the i, f, g gates all scale dc; o scales dh.
        fac3, dg3 = fac.view(t, b, 4, hid)[:, :, :3], dg_all.view(t, b, 4, hid)[:, :, :3]
        dh = d_ht.clone()
        dc = d_ct.clone()
        with _one_thread(fac):
            for s in reversed(range(t)):
                dh += d_hs_t[s]
                dc.addcmul_(dh, oq[s])
                torch.mul(fac3[s], dc.unsqueeze(1), out=dg3[s])
                torch.mul(fac[s, :, 3 * hid :], dh, out=dg_all[s, :, 3 * hid :])
                dc.mul_(f_all[s])
                dh = linear_rows(dg_all[s], w_packed)  # (B, H)
        capture = ctx.capture
        if capture is not None:
            # Per-example kernels want (B, T, ·) views.
            capture["hprev"], capture["dg"] = hs[:-1].transpose(0, 1), dg_all.transpose(0, 1)
            dw_hh = None
        else:
            # As (Hprevᵀ G)ᵀ: MKL ran this orientation in two thirds of the time of Gᵀ Hprev.
            dw_hh = (hs[:-1].reshape(t * b, -1).t() @ dg_all.view(t * b, -1)).t()
        return dg_all, dh, dc, dw_hh, None, None


# Above this many multiply-adds in a step's recurrent GEMM (B·H·4H) the GEMM itself
# needs every thread: PTB-medium's 64 x 650 x 2,600 = 108 M keeps them; the DP
# benchmark's LSTMs (128 x 128 x 512 = 8.4 M, 128 x 256 x 1,024 = 34 M) do not.
ONE_THREAD_MAX_MACS = 2**26


def _step_macs(like: torch.Tensor) -> int:
    """B·H·4H of a (T, B, 4H) tensor: the multiply-adds of one step's recurrent GEMM."""
    _, b, four_h = like.shape
    return b * four_h * four_h // 4


@contextmanager
def _one_thread(like: torch.Tensor) -> Iterator[None]:
    """Run a CPU step loop on one intra-op thread, restoring the count afterwards.

    A step of the recurrence is a handful of small ops (B x 4H elements and a B-row
    GEMM); with several OpenMP threads each op pays a fork/join and, on a shared
    machine, the wake-up of sleeping threads. On the project's 2-core machine under load
    the forward loop ran 2.2x (H = 128) and 1.3x (H = 256) faster on one thread than on
    two. The count is the same at every call, so results stay deterministic.
    """
    threads = torch.get_num_threads()
    if like.device.type != "cpu" or threads == 1 or _step_macs(like) > ONE_THREAD_MAX_MACS:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
