"""Step loops over the batch's row blocks, one block per CPU thread, run side by side.

A recurrence's time steps are sequential but its examples are independent, so a loop
of small per-step ops (a B-row GEMM and a few (B, 4H) elementwise ops) can run as
several loops over disjoint row blocks at once, each on one intra-op thread. Torch
releases the GIL inside every op, so the blocks' Python threads overlap their compute,
and no op pays an OpenMP fork/join or waits on a descheduled sibling thread (the
reason a multi-threaded step loop lost to a one-thread one on the project's shared
2-core machine). Measured there for the DP benchmark's char-LSTM layer (T = 80,
B = 128, H = 256): 103 ms on one thread, 84 ms on two OpenMP threads, 46 ms as two
row blocks (and 85 ms for the layer in torch's fused oneDNN kernel).

Every row of every op is computed by the same single-threaded kernel whatever the block
it falls in; the number of blocks follows ``torch.get_num_threads()``, which a run sets
deliberately, so results stay reproducible.

:func:`run_side_by_side` is the mechanism for any independent loops: the gathered
decoder's data-gradient and weight-gradient loops run that way too
(:mod:`fedsim.kernels.gathered`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from threading import Lock
from typing import TypeVar

import torch

# Above this many multiply-adds in a step's recurrent GEMM (B·H·4H) the GEMM itself
# pays for several threads and the loop runs whole, on all of them: PTB-medium's
# 64 x 650 x 2,600 = 108 M keeps them.
SPLIT_MAX_MACS = 2**26
# Below this many the loop runs whole on one thread: each op of a block is then so
# small that the blocks' threads spend their time handing the GIL to each other. The
# DP benchmark's LSTM classifier (128 x 128 x 512 = 8.4 M a step) took 1.65x a
# non-private step split against 1.45x whole (three A/Bs, 2 threads, load 4); its
# char-LSTM (128 x 256 x 1,024 = 34 M) took 1.16-1.31x split against 1.51-1.57x whole.
SPLIT_MIN_MACS = 2**24
# Fewest rows a block gets: below this a block's GEMM is too thin to pay for a thread.
MIN_BLOCK_ROWS = 8

Part = TypeVar("Part")

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = Lock()


def _forget_pools() -> None:
    """In a forked child: the pools came without their threads, the lock maybe held."""
    global _pools_lock
    _pools_lock = Lock()
    _pools.clear()


os.register_at_fork(after_in_child=_forget_pools)


def _workers(count: int) -> ThreadPoolExecutor:
    """The process's pool of ``count`` block threads, started on first use."""
    with _pools_lock:
        if count not in _pools:
            _pools[count] = ThreadPoolExecutor(count, thread_name_prefix="fedsim-rows")
        return _pools[count]


def row_blocks(batch: int, step_macs: int, device: torch.device) -> list[slice] | None:
    """Row blocks a step loop over ``batch`` examples runs as, each on one thread.

    Parameters
    ----------
    batch : int
        Rows of every per-step operand.
    step_macs : int
        Multiply-adds of one step's largest GEMM (B·H·4H for an LSTM layer).
    device : torch.device
        Only CPU loops are split; a GPU runs each op across the batch already.

    Returns
    -------
    list of slice or None
        ``None``: run the loop whole on every intra-op thread (a GPU, or a step whose
        GEMM pays for several threads). Otherwise up to ``torch.get_num_threads()``
        blocks of at least :data:`MIN_BLOCK_ROWS` rows; a single block (still run on one
        thread, a small op's fastest) if the batch is too small to split or a step
        does fewer than :data:`SPLIT_MIN_MACS` multiply-adds.
    """
    if device.type != "cpu" or step_macs > SPLIT_MAX_MACS:
        return None
    count = max(1, min(torch.get_num_threads(), batch // MIN_BLOCK_ROWS))
    if step_macs < SPLIT_MIN_MACS:
        count = 1
    bounds = [batch * k // count for k in range(count + 1)]
    return [slice(bounds[k], bounds[k + 1]) for k in range(count)]


def run_by_rows(
    work: Callable[[slice], None], batch: int, step_macs: int, device: torch.device
) -> None:
    """Call ``work(rows)`` for the row blocks of :func:`row_blocks`, side by side.

    Each block, a lone one too, runs on one intra-op thread (:func:`run_side_by_side`).
    ``work`` must write only its own rows of any shared tensor.
    """
    blocks = row_blocks(batch, step_macs, device)
    if blocks is None:
        work(slice(0, batch))
        return
    run_side_by_side(work, blocks, threads_each=1)


def run_side_by_side(
    work: Callable[[Part], None], parts: Sequence[Part], threads_each: int | None = None
) -> None:
    """Call ``work(part)`` for every part at once, each on its own Python thread.

    Each part runs on ``threads_each`` intra-op threads, by default an equal share of
    the caller's (one each when there are as many parts as threads), so no op pays an
    OpenMP fork/join and a single-threaded op (a scatter-add) leaves no core idle. The
    calling thread takes the first part, then any part whose pool thread has not started
    by then (on a shared machine its core may be busy: the work then costs what it costs
    in sequence, no more). Torch releases the GIL inside every op, so the parts' ops
    overlap. ``work`` must write only its own part of any shared tensor; the first
    exception raised by a part is raised here once every started part has finished.
    """
    threads, grad_enabled = torch.get_num_threads(), torch.is_grad_enabled()
    share = threads_each or max(1, threads // max(len(parts), 1))
    # A pool thread drops its work item a moment after the caller sees it done: through
    # this box, emptied on return, nothing ``work`` holds (an output) outlives the call.
    box = [work]

    def in_pool(part: Part) -> None:
        torch.set_num_threads(share)  # this worker's own setting (the caller restores its own)
        with torch.set_grad_enabled(grad_enabled):  # grad mode is per thread: the caller's
            box[0](part)

    torch.set_num_threads(share)
    try:
        pool = _workers(len(parts) - 1) if len(parts) > 1 else None
        futures: list[Future[None]] = [pool.submit(in_pool, p) for p in parts[1:]] if pool else []
        try:
            work(parts[0])
            for future, part in zip(futures, parts[1:], strict=True):
                if future.cancel():  # its thread never got a core: the caller runs it
                    work(part)
        finally:
            errors = [f.exception() for f in futures if not f.cancelled()]
        for error in errors:
            if error is not None:
                raise error
    finally:
        box.clear()
        torch.set_num_threads(threads)
