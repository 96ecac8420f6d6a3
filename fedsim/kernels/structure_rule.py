"""Where structured dropout's gathered GEMMs pay, by device and shape: one documented rule.

Gathering the kept columns halves a consumer's GEMM flops at p = 0.5, but each time step
then runs its own GEMM of only B rows against its own weight slice. Where that GEMM runs
far below the throughput of the one dense (B·T)-row GEMM, or too little is dropped, the
gathered route loses, and the model takes the dense route (the masked input through one
dense GEMM per product), the same sums a user's ``nn.LSTM`` and ``nn.Dropout`` compute.
So the structure never slows a step down where the rule is right, and it is measured
where it can be wrong: ``benchmarks/structured_dropout.py`` prints the ratio
for every benchmark shape and ``worst_speedup_vs_torch_lstm``.

CPU (measured, docs/benchmarks.md): B = 20 gathers at 0.65-0.95x and p = 0.3 at 0.90x
of the dense decoder; B = 64 with p >= 0.5 gains at hidden 650 and 1,500, but loses at
hidden 256 (the char-LM: 0.86-0.87x of ``nn.LSTM`` on a quiet machine), where each
step's gathered GEMM is too small to repay its own launch; 512 is the threshold we
chose between the measured 256 and 650. With oneDNN running the per-step GEMMs
(:mod:`fedsim.kernels.gemm`) the rule still holds: the gathered decoder took 1.4x (B = 20,
p = 0.5), 1.9x (B = 20, p = 0.3), 1.06x (B = 64, p = 0.3) and 3.7x (the char-LM) the CPU
time of the dense one, and 0.77x at B = 64, p = 0.5. CUDA (not yet measured here: no GPU was
lent when the rule was written): the batched route gathers every step's weight slice at
once, a memory-bound copy of ``T·kept·out`` floats, which a half-size GEMM repays only
when the hidden size is large (PTB-large, 1,500); below 1,024 units cuBLAS runs the dense
GEMM faster than the copy costs, so the dense route stays.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GatherRule:
    """The smallest batch, drop rate and hidden size at which gathering pays on a device."""

    min_batch: int
    min_p: float
    min_hidden: int = 0


# Keyed by ``torch.device.type``; a device type missing here takes the dense route.
GATHER_RULES: dict[str, GatherRule] = {
    "cpu": GatherRule(min_batch=48, min_p=0.4, min_hidden=512),
    "cuda": GatherRule(min_batch=48, min_p=0.4, min_hidden=1024),
}


# Device types on which a step-loop LSTM layer (DP passes, ``fused=False``) also asks the
# rule before gathering its structurally dropped input; elsewhere it always gathers. On
# CUDA the batched gather costs a host synchronisation (the largest kept count) and a
# copy of every step's weight slice, which the rule's dense route avoids.
INPUT_GATHER_BY_RULE: set[str] = {"cuda"}


def structure_pays(device_type: str, batch: int, hidden: int, p: float) -> bool:
    """Whether a consumer of structurally dropped (B, T, hidden) inputs should gather.

    Parameters
    ----------
    device_type : str
        ``torch.device.type`` of the inputs (``"cpu"``, ``"cuda"``, ...).
    batch : int
        Rows per time step (B).
    hidden : int
        Width of the dropped input.
    p : float
        Drop probability.

    Returns
    -------
    bool
        ``True``: compute on the kept columns only (:func:`gathered_linear`); ``False``:
        the dense route (the masked input through one GEMM).
    """
    rule = GATHER_RULES.get(device_type)
    if rule is None:
        return False
    return batch >= rule.min_batch and p >= rule.min_p and hidden >= rule.min_hidden
