"""Linear maps of structurally dropped sequences, computed on the kept columns only.

Structured dropout (Sarma et al. 2021) drops whole hidden units for the whole batch,
with a fresh mask every time step: at step t the input ``x_t`` (B, H) is zero outside
the kept set ``K_t`` and scaled by ``1/(1-p)`` inside it. A layer consuming it then
needs only ``x_t[:, K_t]`` and ``W[:, K_t]``, so its forward GEMM and both backward GEMMs
(data and weight gradient) shrink by the keep ratio. :func:`gathered_linear` does that
with its own backward, by one of two routes chosen by the device (:data:`ROUTES`):

* per step (CPU): T GEMMs of B rows, each against its own gathered weight slice, run by
  :func:`~fedsim.kernels.gemm.linear_rows` (oneDNN in float32: faster at so few rows).
  The steps are dealt to the intra-op threads, each GEMM on one thread, and the
  backward pass runs its data-gradient and weight-gradient loops side by side
  (:func:`~fedsim.kernels.row_blocks.run_side_by_side`): on this project's 2-core CPU
  multi-threaded narrow GEMMs and aten's single-threaded scatter-add left a core idle
  (docs/benchmarks.md);
* batched (CUDA and other accelerators): the kept index sets of all steps are found in
  one call (one host synchronisation, for the largest kept count), padded to that count
  with dropped units whose inputs are zeroed, and every step's slice is gathered at once,
  so the forward and both backward GEMMs are batched GEMMs over (T, B, kept): a handful
  of kernel launches instead of several per step. Steps are taken in chunks that bound
  the gathered weights to :data:`BATCHED_MAX` elements.

Both are exact: the padded positions contribute zeros, and each step's kept set is the
same as the per-step route's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import FunctionCtx

from fedsim.kernels.gemm import column_sums, linear_rows
from fedsim.kernels.row_blocks import run_side_by_side
from fedsim.kernels.spare_buffers import empty_reusing


def draw_keep_masks(
    layers: int, steps: int, hidden: int, p: float, device: torch.device | None = None
) -> torch.Tensor:
    """Boolean keep masks (layers, T, H) from torch's RNG: shared by the batch."""
    return torch.rand(layers, steps, hidden, device=device) >= p


class _GatheredLinear(torch.autograd.Function):
    """``y_t = (scale · x_t[:, K_t]) W[:, K_t]ᵀ + b`` for every step t, time major out."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,  # (B, T, H); columns outside K_t are never read
        keep: torch.Tensor,  # (T, H) bool
        weight: torch.Tensor,  # (out, H)
        bias: torch.Tensor | None,  # (out,)
        scale: float,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        idx = [torch.nonzero(keep[s]).flatten() for s in range(t)]
        # The (T, B, out) output, on the previous call's memory when that is dead: a
        # decoder's logits are large enough that fresh pages cost a fault each.
        out = empty_reusing(f"gathered_linear:{weight.shape[0]}", (t, b, weight.shape[0]), x)
        # (H, out), contiguous once per call: each step then gathers whole rows (memcpy)
        # instead of striding through W's columns.
        wt = weight.t().contiguous()

        def steps(part: range) -> None:
            for s in part:
                xs = x[:, s].index_select(1, idx[s]).mul_(scale)  # (B, k_t)
                ws = wt.index_select(0, idx[s])  # (k_t, out)
                out[s] = linear_rows(xs, ws.t(), bias)

        # Steps dealt round-robin to the threads, one thread each (the same GEMMs, so the
        # same sums): no OpenMP fork/join per narrow GEMM, no core idle in the gathers.
        threads = min(torch.get_num_threads(), t)
        if threads > 1:
            run_side_by_side(steps, [range(k, t, threads) for k in range(threads)])
        else:
            steps(range(t))
        ctx.save_for_backward(x, wt)
        ctx.idx, ctx.scale, ctx.has_bias = idx, scale, bias is not None  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, wt = ctx.saved_tensors
        idx, scale = ctx.idx, ctx.scale
        dx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        dwt = torch.zeros_like(wt) if ctx.needs_input_grad[2] else None

        def data_grads(dx: torch.Tensor) -> None:
            for s in range(x.shape[1]):  # (k_t, B): the data-gradient GEMM, shrunk,
                # transposed so that the big gathered slice is the GEMM's input, not a
                # weight to reorder
                dxs_t = linear_rows(wt.index_select(0, idx[s]), d_out[s]).mul_(scale)
                dx[:, s].index_copy_(1, idx[s], dxs_t.t())

        def weight_grads(dwt: torch.Tensor) -> None:
            for s in range(x.shape[1]):  # (k_t, out): the weight-gradient GEMM, shrunk
                xs = x[:, s].index_select(1, idx[s]).mul_(scale)
                dwt.index_add_(0, idx[s], linear_rows(xs.t(), d_out[s].t()))

        loops = [(f, g) for f, g in ((weight_grads, dwt), (data_grads, dx)) if g is not None]
        if len(loops) == 2 and torch.get_num_threads() > 1:
            # The two loops share no output: side by side, each on its share of the
            # threads, the scatter-add (single-threaded in aten) no longer idles a core.
            run_side_by_side(lambda loop: loop[0](loop[1]), loops)
        else:
            for loop, grad in loops:
                loop(grad)
        db = None
        if ctx.has_bias and ctx.needs_input_grad[3]:
            db = column_sums(d_out.reshape(-1, d_out.shape[-1]))
        return dx, None, None if dwt is None else dwt.t(), db, None


# Largest gathered weight block (chunk·kept·out elements) of the batched route: 1 GiB in
# float32, a small share of an accelerator's memory, and few chunks at PTB-large.
BATCHED_MAX = 2**28


def padded_kept_index(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each step's kept units first, padded with distinct dropped units, and the validity.

    Returns ``idx`` (T, k_max) long and ``valid`` (T, k_max) bool, where ``k_max`` is the
    largest kept count. A stable sort on ``~keep`` lists a row's kept units in
    ascending order and then its dropped ones, so every row of ``idx`` is a set of
    distinct units: scattering back through it never collides.
    """
    counts = keep.sum(1)
    k_max = max(int(counts.max()), 1)  # the one host synchronisation of the route
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :k_max]
    valid = torch.arange(k_max, device=keep.device) < counts.unsqueeze(1)
    return order, valid


class _GatheredLinearBatched(torch.autograd.Function):
    """The same map as :class:`_GatheredLinear`, as batched GEMMs over chunks of steps."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,  # (B, T, H)
        keep: torch.Tensor,  # (T, H) bool
        weight: torch.Tensor,  # (out, H)
        bias: torch.Tensor | None,  # (out,)
        scale: float,
    ) -> torch.Tensor:
        b, t, h = x.shape
        idx, valid = padded_kept_index(keep)
        k = idx.shape[1]
        xt = x.transpose(0, 1)  # (T, B, H), a view
        # Inputs on the kept units, padded positions zero: (T, B, k).
        sv = (valid * scale).to(x.dtype).unsqueeze(1)  # (T, 1, k): scale, 0 on padding
        xs = xt.gather(2, idx.unsqueeze(1).expand(t, b, k)) * sv
        wt = weight.t()  # (H, out)
        out = x.new_empty(t, b, weight.shape[0])
        for s0, s1 in _chunks(t, k * weight.shape[0]):
            ws = wt[idx[s0:s1]]  # (c, k, out): every step's weight slice in one gather
            if bias is None:
                torch.bmm(xs[s0:s1], ws, out=out[s0:s1])
            else:
                torch.baddbmm(bias, xs[s0:s1], ws, out=out[s0:s1])
        ctx.save_for_backward(xs, idx, sv, weight)
        ctx.has_bias, ctx.x_shape = bias is not None, (b, t, h)  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xs, idx, sv, weight = ctx.saved_tensors
        b, t, h = ctx.x_shape
        k = idx.shape[1]
        wt = weight.t()
        dxs = xs.new_empty(t, b, k) if ctx.needs_input_grad[0] else None
        dwt = torch.zeros_like(wt) if ctx.needs_input_grad[2] else None
        for s0, s1 in _chunks(t, k * weight.shape[0]):
            ii = idx[s0:s1]
            d = d_out[s0:s1]  # (c, B, out)
            if dxs is not None:  # (c, B, k) = d · W_Kᵀ: the data-gradient GEMMs, shrunk
                torch.bmm(d, wt[ii].transpose(1, 2), out=dxs[s0:s1])
            if dwt is not None:  # (c, k, out) = X_Kᵀ d: the weight-gradient GEMMs, shrunk
                dwt.index_add_(
                    0, ii.reshape(-1), torch.bmm(xs[s0:s1].transpose(1, 2), d).flatten(0, 1)
                )
        dx = None
        if dxs is not None:
            # Scaled like the inputs, zero on padding, which lands on dropped units
            # (distinct within a row, so the scatter never collides).
            dxs.mul_(sv)
            dx = xs.new_zeros(t, b, h).scatter_(2, idx.unsqueeze(1).expand(t, b, k), dxs)
            dx = dx.transpose(0, 1)
        db = d_out.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return dx, None, None if dwt is None else dwt.t(), db, None


def _chunks(steps: int, per_step: int) -> list[tuple[int, int]]:
    """Consecutive step ranges whose gathered weights stay under :data:`BATCHED_MAX`."""
    size = max(1, BATCHED_MAX // max(per_step, 1))
    return [(s, min(s + size, steps)) for s in range(0, steps, size)]


def gathered_linear(
    x: torch.Tensor,
    keep: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """``scale · (x ⊙ keep) Wᵀ + b`` computed on kept columns only, time major (T, B, out).

    Parameters
    ----------
    x : Tensor
        (B, T, H) inputs; only the kept columns of each step are read.
    keep : Tensor
        (T, H) boolean keep mask, shared by the batch.
    weight, bias : Tensor
        As in ``nn.Linear`` ((out, H) and (out,)).
    scale : float
        Applied to ``x`` (the inverted-dropout factor ``1/(1-p)``).

    The route (per step or batched) follows the device, :data:`ROUTES`.
    """
    route = ROUTES.get(x.device.type, _GatheredLinearBatched)
    return route.apply(x, keep, weight, bias, scale)  # type: ignore[no-any-return]


# Per device type; any other device takes the batched route (one launch per chunk, not
# per step). The CPU's per-step GEMMs measured faster there than a batched GEMM over the
# gathered slices (docs/benchmarks.md).
ROUTES: dict[str, type[torch.autograd.Function]] = {
    "cpu": _GatheredLinear,
    "cuda": _GatheredLinearBatched,
}
