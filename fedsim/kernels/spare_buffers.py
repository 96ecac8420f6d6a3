"""Large CPU outputs that reuse the memory of their previous instance once it is dead.

torch's CPU allocator hands large blocks (beyond glibc's 32 MB mmap threshold) back to
the kernel when they are freed, and a fresh one is zero-filled by the kernel page by
page on first touch: the gathered decoder's (T, B, vocab) logits at PTB-medium, B = 64
(90 MB) took about 22,000 page faults, some 45 ms of CPU time, on every training step.
A kernel that makes the same large output every step asks :func:`empty_reusing` for it
instead: when nothing references the previous output's memory any more (checked on
the storage's reference count, so views, autograd and a caller that kept the tensor
all count), the new tensor is built on that memory, already mapped; otherwise it is an
ordinary new tensor. One spare block is kept per named slot, for the process's life.
"""

from __future__ import annotations

import math
from threading import Lock

import torch

# Below this many bytes glibc's heap keeps freed blocks mapped: nothing to gain.
MIN_BYTES = 32 * 2**20

_spares: dict[str, torch.UntypedStorage] = {}
_lock = Lock()


def _unreferenced(storage: torch.UntypedStorage) -> bool:
    """Whether only the spare table holds ``storage`` (torch's own reference count)."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:  # a torch without it: never reuse, never wrong
        return False
    return bool(use_count(storage._cdata) == 1)


def empty_reusing(slot: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``like.new_empty(shape)``, on the slot's spare memory when that is free.

    Parameters
    ----------
    slot : str
        Names the output (one spare block per slot).
    shape : tuple of int
        Shape of the new, contiguous, uninitialised tensor.
    like : Tensor
        Its dtype and device. Only CPU outputs of at least :data:`MIN_BYTES` are kept.

    Returns
    -------
    Tensor
        Uninitialised, contiguous; it shares memory with no live tensor.
    """
    nbytes = math.prod(shape) * like.element_size()
    if like.device.type != "cpu" or nbytes < MIN_BYTES:
        return like.new_empty(shape)
    with _lock:
        spare = _spares.get(slot)
        if spare is not None and spare.nbytes() == nbytes and _unreferenced(spare):
            strides = [math.prod(shape[k + 1 :]) for k in range(len(shape))]  # contiguous
            reused: torch.Tensor = like.new_empty(0).set_(spare, 0, shape, strides)
            return reused
        out = like.new_empty(shape)
        _spares[slot] = out.untyped_storage()
        return out
