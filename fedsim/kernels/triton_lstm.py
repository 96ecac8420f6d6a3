"""An LSTM layer's recurrence as two Triton kernels: one launch forward, one backward.

Optional: needs ``triton`` (the ``gpu`` extra). Each program owns a block of batch rows
and walks all T steps itself (examples are independent), computing every step's four
gate blocks as ``gx_t + h_{t-1} W_hhᵀ`` with ``tl.dot`` over column blocks of H, then the
cell and hidden states; a barrier between steps makes the step's hidden state, written
to global memory, visible to the whole program before the next step reads it. The
backward kernel walks the steps in reverse the same way and writes every step's gate
pre-activation gradients ``G`` (T, B, 4H), so a DP pass has them at hand for the
per-example kernel without another pass over time; the weight gradient ``Gᵀ H_prev`` is
one GEMM after it.

Dots run with ``input_precision="ieee"`` (no TF32). ``tanh(z)`` is ``2σ(2z) − 1``. T and H
are compile-time constants (a model compiles once per sequence length; the interpreter,
with numpy 2, cannot loop over a run-time bound).
Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (the tests do that).

Parallelism is one program per block of :data:`BLOCK_B` rows, so a small batch fills few
of a GPU's multiprocessors: the route is not the default anywhere
(:data:`fedsim.kernels.recurrence_routes.DP_RECURRENCE`); ``benchmarks/dp_clipping.py
--recurrence triton`` measures it against cuDNN.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.autograd.function import FunctionCtx

try:
    import triton
    import triton.language as tl
except ImportError:  # the optional ``gpu`` extra
    triton = None

# Whether triton runs these kernels in its interpreter (on CPU tensors), as it decides.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

BLOCK_B = 16  # rows per program (tl.dot needs at least 16)
BLOCK_H = 32  # hidden units per column block
BLOCK_K = 32  # reduction block of the recurrent GEMM


def runs_on(device_type: str) -> bool:
    """Whether the kernels can run on tensors of ``device_type`` in this process.

    CUDA tensors need triton and a GPU; CPU tensors need triton's interpreter, chosen by
    ``TRITON_INTERPRET=1`` before this module was imported (triton reads it when the
    kernels are defined).
    """
    if triton is None:
        return False
    if device_type == "cuda":
        return torch.cuda.is_available() and not INTERPRETED
    return device_type == "cpu" and INTERPRETED


def require(device_type: str) -> None:
    """Raise ``RuntimeError`` saying why the kernels cannot run on ``device_type``."""
    if triton is None:
        raise RuntimeError("the 'triton' LSTM route needs triton: pip install 'fedsim[gpu]'")
    if not runs_on(device_type):
        raise RuntimeError(
            f"the 'triton' LSTM route cannot run on {device_type} tensors here: CUDA needs "
            "a GPU, the CPU needs TRITON_INTERPRET=1 set before fedsim.kernels.triton_lstm "
            "is imported"
        )


if triton is not None:

    @triton.jit
    def _sigmoid(z):
        return 1.0 / (1.0 + tl.exp(-z))

    @triton.jit
    def _tanh(z):
        return 2.0 / (1.0 + tl.exp(-2.0 * z)) - 1.0

    @triton.jit
    def _forward_kernel(
        gx,  # (T, B, 4H) input projections plus biases
        w,  # (4H, H) W_hh
        hs,  # (T + 1, B, H): hs[0] = h0 on entry
        cs,  # (T + 1, B, H): cs[0] = c0 on entry
        acts,  # (T, B, 4H) activated gates i, f, g, o (out)
        B,
        T: tl.constexpr,
        H: tl.constexpr,
        BB: tl.constexpr,
        BH: tl.constexpr,
        BK: tl.constexpr,
    ):
        rows = tl.program_id(0) * BB + tl.arange(0, BB)
        rmask = rows < B
        for t in range(T):
            for j0 in range(0, H, BH):
                cols = j0 + tl.arange(0, BH)
                m2 = rmask[:, None] & (cols < H)[None, :]
                at = rows[:, None] * 4 * H + cols[None, :] + t * B * 4 * H  # gate i's block
                zi = tl.load(gx + at, mask=m2, other=0.0)
                zf = tl.load(gx + at + H, mask=m2, other=0.0)
                zg = tl.load(gx + at + 2 * H, mask=m2, other=0.0)
                zo = tl.load(gx + at + 3 * H, mask=m2, other=0.0)
                for k0 in range(0, H, BK):
                    ks = k0 + tl.arange(0, BK)
                    kmask = ks < H
                    h = tl.load(
                        hs + t * B * H + rows[:, None] * H + ks[None, :],
                        mask=rmask[:, None] & kmask[None, :],
                        other=0.0,
                    )  # (BB, BK)
                    wm = kmask[:, None] & (cols < H)[None, :]
                    wt = w + cols[None, :] * H + ks[:, None]  # W[gate·H + col, k] as (BK, BH)
                    wi = tl.load(wt, mask=wm, other=0.0)
                    wf = tl.load(wt + H * H, mask=wm, other=0.0)
                    wg = tl.load(wt + 2 * H * H, mask=wm, other=0.0)
                    wo = tl.load(wt + 3 * H * H, mask=wm, other=0.0)
                    zi += tl.dot(h, wi, input_precision="ieee")
                    zf += tl.dot(h, wf, input_precision="ieee")
                    zg += tl.dot(h, wg, input_precision="ieee")
                    zo += tl.dot(h, wo, input_precision="ieee")
                i = _sigmoid(zi)
                f = _sigmoid(zf)
                g = _tanh(zg)
                o = _sigmoid(zo)
                st = rows[:, None] * H + cols[None, :] + t * B * H
                c = f * tl.load(cs + st, mask=m2, other=0.0) + i * g
                tl.store(cs + st + B * H, c, mask=m2)
                tl.store(hs + st + B * H, o * _tanh(c), mask=m2)
                tl.store(acts + at, i, mask=m2)
                tl.store(acts + at + H, f, mask=m2)
                tl.store(acts + at + 2 * H, g, mask=m2)
                tl.store(acts + at + 3 * H, o, mask=m2)
            tl.debug_barrier()  # step t's h is in global memory for every thread

    @triton.jit
    def _backward_kernel(
        d_hs,  # (T, B, H) gradient of the hidden-state outputs
        w,  # (4H, H) W_hh
        cs,  # (T + 1, B, H)
        acts,  # (T, B, 4H)
        dg,  # (T, B, 4H) gate pre-activation gradients (out)
        dh,  # (B, H): d h_T on entry, d h_0 on exit
        dc,  # (B, H): d c_T on entry, d c_0 on exit
        B,
        T: tl.constexpr,
        H: tl.constexpr,
        BB: tl.constexpr,
        BH: tl.constexpr,
        BK: tl.constexpr,
    ):
        rows = tl.program_id(0) * BB + tl.arange(0, BB)
        rmask = rows < B
        for s in range(T):
            t = T - 1 - s
            for j0 in range(0, H, BH):
                cols = j0 + tl.arange(0, BH)
                m2 = rmask[:, None] & (cols < H)[None, :]
                rc = rows[:, None] * H + cols[None, :]
                st = rc + t * B * H
                at = rows[:, None] * 4 * H + cols[None, :] + t * B * 4 * H
                dh_t = tl.load(dh + rc, mask=m2, other=0.0) + tl.load(d_hs + st, mask=m2, other=0.0)
                i = tl.load(acts + at, mask=m2, other=0.0)
                f = tl.load(acts + at + H, mask=m2, other=0.0)
                g = tl.load(acts + at + 2 * H, mask=m2, other=0.0)
                o = tl.load(acts + at + 3 * H, mask=m2, other=0.0)
                tc = _tanh(tl.load(cs + st + B * H, mask=m2, other=0.0))
                dc_t = tl.load(dc + rc, mask=m2, other=0.0) + dh_t * o * (1.0 - tc * tc)
                c_prev = tl.load(cs + st, mask=m2, other=0.0)
                tl.store(dg + at, dc_t * g * i * (1.0 - i), mask=m2)
                tl.store(dg + at + H, dc_t * c_prev * f * (1.0 - f), mask=m2)
                tl.store(dg + at + 2 * H, dc_t * i * (1.0 - g * g), mask=m2)
                tl.store(dg + at + 3 * H, dh_t * tc * o * (1.0 - o), mask=m2)
                tl.store(dc + rc, dc_t * f, mask=m2)
            tl.debug_barrier()  # every gate gradient of step t is written
            for j0 in range(0, H, BH):  # dh_{t-1} = G_t W_hh, reduced over all 4H rows
                cols = j0 + tl.arange(0, BH)
                acc = tl.zeros((BB, BH), dtype=dh.dtype.element_ty)
                for k0 in range(0, 4 * H, BK):
                    ks = k0 + tl.arange(0, BK)
                    kmask = ks < 4 * H
                    gk = tl.load(
                        dg + t * B * 4 * H + rows[:, None] * 4 * H + ks[None, :],
                        mask=rmask[:, None] & kmask[None, :],
                        other=0.0,
                    )  # (BB, BK)
                    wk = tl.load(
                        w + ks[:, None] * H + cols[None, :],
                        mask=kmask[:, None] & (cols < H)[None, :],
                        other=0.0,
                    )  # (BK, BH)
                    acc += tl.dot(gk, wk, input_precision="ieee")
                m2 = rmask[:, None] & (cols < H)[None, :]
                tl.store(dh + rows[:, None] * H + cols[None, :], acc, mask=m2)
            tl.debug_barrier()  # dh_{t-1} complete before step t-1 reads it


def _grid(batch: int) -> tuple[int]:
    return ((batch + BLOCK_B - 1) // BLOCK_B,)


class TritonRecurrence(torch.autograd.Function):
    """The recurrence of one LSTM layer given its input projections, as Triton kernels.

    Same contract as :class:`fedsim.kernels.recurrence.Recurrence`: returns the hidden
    states (B, T, H) and the last ``h`` and ``c``; in capture mode the backward pass
    leaves ``hprev`` and ``dg`` ((B, T, ·) views of time-major storage) in ``capture``
    and returns no gradient for ``w_hh``.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        gx: torch.Tensor,  # (T, B, 4H)
        h0: torch.Tensor,  # (B, H)
        c0: torch.Tensor,  # (B, H)
        w_hh: torch.Tensor,  # (4H, H)
        capture: dict[str, Any] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the forward kernel."""
        t, b, four_h = gx.shape
        hid = four_h // 4
        gx, w = gx.contiguous(), w_hh.detach().contiguous()
        hs, cs = gx.new_empty(t + 1, b, hid), gx.new_empty(t + 1, b, hid)
        hs[0], cs[0] = h0, c0
        acts = gx.new_empty(t, b, four_h)
        _forward_kernel[_grid(b)](
            gx, w, hs, cs, acts, b, T=t, H=hid, BB=BLOCK_B, BH=BLOCK_H, BK=BLOCK_K
        )
        ctx.save_for_backward(w, hs, cs, acts)
        ctx.capture = capture  # type: ignore[attr-defined]
        return hs[1:].transpose(0, 1), hs[t].clone(), cs[t].clone()

    @staticmethod
    def backward(
        ctx: Any, d_hs: torch.Tensor, d_ht: torch.Tensor, d_ct: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        """Run the backward kernel; ``dW_hh = Gᵀ H_prev`` as one GEMM."""
        w, hs, cs, acts = ctx.saved_tensors
        t, b, four_h = acts.shape
        hid = four_h // 4
        dg = acts.new_empty(t, b, four_h)
        dh, dc = d_ht.contiguous().clone(), d_ct.contiguous().clone()
        d_hs_t = d_hs.transpose(0, 1).contiguous()  # (T, B, H)
        _backward_kernel[_grid(b)](
            d_hs_t, w, cs, acts, dg, dh, dc, b, T=t, H=hid, BB=BLOCK_B, BH=BLOCK_H, BK=BLOCK_K
        )
        capture = ctx.capture
        if capture is not None:
            capture["hprev"], capture["dg"] = hs[:-1].transpose(0, 1), dg.transpose(0, 1)
            dw_hh = None
        else:
            dw_hh = dg.view(t * b, -1).t() @ hs[:-1].reshape(t * b, -1)
        return dg, dh, dc, dw_hh, None
