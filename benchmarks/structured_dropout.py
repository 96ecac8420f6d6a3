"""Training-step time of structured vs per-element dropout LSTMs vs nn.LSTM + nn.Dropout.

Word-level PTB-medium shape (vocab 10,000, embedding 650, 2 x 650, T = 35, B = 20 and
64), PTB-large (vocab 10,000, embedding 1,500, 2 x 1,500, T = 35, B = 64) and the
character-LM shape (vocab 80, embedding 8, 2 x 256, T = 80, B = 64), at dropout p in
{0.3, 0.5, 0.65} (PTB-large at p = 0.5 only unless ``--large-ps`` says more: one of its
steps costs about five PTB-medium steps); dropout on each LSTM layer's output (the next
layer's input and the decoder's input), never on the recurrence. One step = forward,
cross-entropy over all positions, backward, SGD step. Implementations, timed
round-robin in one process (median after warm-up, with device synchronisation):

* structured: ``fedsim.kernels.StructuredDropoutLSTM`` in ``CharLM`` (masks shared by
  the batch, redrawn per step), which takes whichever of its paths
  :func:`fedsim.kernels.structure_pays` picks for the shape and device;
* element: the same implementation with ordinary per-element masks;
* structured-loop (only when asked for): the same model with ``fused=False``, every
  layer's dropped input through the gathered GEMM (batched over (T, B, kept) on CUDA) and
  the recurrence by ``--recurrence`` (``step-loop`` or ``triton``, fedsim's Triton
  kernels): the route to measure before CUDA takes it
  (``fedsim.kernels.recurrence_routes.LOOP_RECURRENCE``);
* torch: what a user writes without fedsim, ``nn.LSTM(dropout=p)`` + ``nn.Dropout(p)``
  before the decoder (oneDNN's fused LSTM on the CPU, cuDNN on CUDA).

Usage::

    python benchmarks/structured_dropout.py [--repeats 3] [--threads 2] [--device cpu]
        [--shapes ptb-medium-b64,...] [--impls structured,torch] [--ps 0.3,0.5,0.65]
        [--impls structured,element,torch,structured-loop --recurrence triton]

Last lines: ``speedup_vs_torch_lstm_p0.5: X`` (PTB-medium, B = 64) and
``worst_speedup_vs_torch_lstm: Y`` (the minimum of torch/structured over every shape
and p measured).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import timing  # first: sets OMP_WAIT_POLICY before torch loads its OpenMP runtime
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.kernels.recurrence_routes import LOOP_RECURRENCE, LOOP_ROUTES
from fedsim.models.charlm import CharLM

SHAPES = {  # name: (vocab, embed, hidden, T, batch)
    "ptb-medium-b20": (10_000, 650, 650, 35, 20),
    "ptb-medium-b64": (10_000, 650, 650, 35, 64),
    "ptb-large-b64": (10_000, 1_500, 1_500, 35, 64),
    "char-lm-b64": (80, 8, 256, 80, 64),
}
PS = (0.3, 0.5, 0.65)
LARGE = "ptb-large-b64"
IMPLS = ("structured", "element", "torch", "structured-loop")
OPTIONAL = ("element", "structured-loop")


class TorchLM(nn.Module):
    """What users write today: nn.LSTM with inter-layer dropout plus nn.Dropout."""

    def __init__(self, vocab: int, embed: int, hidden: int, p: float) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, 2, batch_first=True, dropout=p)
        self.drop = nn.Dropout(p)
        self.dec = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.drop(self.lstm(self.emb(x))[0])).transpose(0, 1)  # (T, B, V)


def build(impl: str, vocab: int, embed: int, hidden: int, p: float) -> nn.Module:
    if impl == "torch":
        return TorchLM(vocab, embed, hidden, p)
    model = CharLM(vocab, embed, hidden, 2, p, per_element=impl == "element", time_major=True)
    model.lstm.fused = impl != "structured-loop"
    return model


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    targets = y.t().reshape(-1)  # time major, like the logits

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        logits = model(x)  # (T, B, V)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets).backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument(
        "--impls", default="structured,element,torch", help="structured and torch always"
    )
    parser.add_argument("--ps", default=",".join(map(str, PS)), help="dropout rates")
    parser.add_argument("--large-ps", default="0.5", help=f"dropout rates for {LARGE}")
    parser.add_argument(
        "--recurrence", choices=LOOP_ROUTES, default="step-loop", help="structured-loop's route"
    )
    args = parser.parse_args()
    LOOP_RECURRENCE[args.device] = args.recurrence
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    impls = [i for i in IMPLS if i in args.impls.split(",") or i not in OPTIONAL]
    print(
        f"torch {torch.__version__}, {args.device}, {args.threads} threads, median of "
        f"{args.repeats} interleaved steps after 2 warm-up steps; ms per training step"
    )
    print(
        f"{'shape':<16} {'p':>5} {'structured':>11} {'element':>9} {'torch':>9} "
        f"{'elem/struct':>12} {'torch/struct':>13}"
        + (f" {'loop':>9} {'torch/loop':>11}" if "structured-loop" in impls else "")
    )
    key_speedup, speedups = None, []
    for name in args.shapes.split(","):
        vocab, embed, hidden, t, b = SHAPES[name]
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, vocab, (b, t), generator=g).to(dev)
        y = torch.randint(0, vocab, (b, t), generator=g).to(dev)
        ps = [float(p) for p in (args.large_ps if name == LARGE else args.ps).split(",")]
        for p in ps:
            torch.manual_seed(0)
            fns = {
                impl: train_step(build(impl, vocab, embed, hidden, p).to(dev).train(), x, y)
                for impl in impls
            }
            med = timing.interleaved_medians(fns, args.repeats, sync=timing.device_sync(dev.type))
            s, tt = med["structured"], med["torch"]
            e = med.get("element", float("nan"))
            print(
                f"{name:<16} {p:>5.2f} {s * 1e3:>11.1f} {e * 1e3:>9.1f} {tt * 1e3:>9.1f} "
                f"{e / s:>12.2f} {tt / s:>13.2f}"
                + (
                    f" {med['structured-loop'] * 1e3:>9.1f} {tt / med['structured-loop']:>11.2f}"
                    if "structured-loop" in med
                    else ""
                ),
                flush=True,
            )
            speedups.append(tt / s)
            if name == "ptb-medium-b64" and p == 0.5:
                key_speedup = tt / s
            del fns
    if key_speedup is not None:
        print(f"speedup_vs_torch_lstm_p0.5: {key_speedup:.2f}")
    print(f"worst_speedup_vs_torch_lstm: {min(speedups):.2f}")


if __name__ == "__main__":
    main()
