"""Training-step time of structured vs per-element dropout LSTMs vs nn.LSTM + nn.Dropout.

Word-level PTB-medium shape (vocab 10,000, embedding 650, 2 x 650, T = 35, B = 20 and
64) and the character-LM shape (vocab 80, embedding 8, 2 x 256, T = 80, B = 64), at
dropout p in {0.3, 0.5, 0.65}; dropout on each LSTM layer's output (the next layer's
input and the decoder's input), never on the recurrence. One step = forward,
cross-entropy over all positions, backward, SGD step. Implementations, timed
round-robin in one process (median after warm-up):

* structured: ``fedsim.kernels.StructuredDropoutLSTM`` with the LM decoder gathering
  the kept columns (masks shared by the batch, redrawn per step);
* element: the same implementation with ordinary per-element masks;
* torch: ``nn.LSTM(dropout=p)`` + ``nn.Dropout(p)`` before the decoder.

Usage::

    python benchmarks/structured_dropout.py [--repeats 5] [--threads 2]

Last line: ``speedup_vs_torch_lstm_p0.5: X`` (PTB-medium, B = 64).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import interleaved_medians
from torch import nn

from fedsim.models.charlm import CharLM

SHAPES = {  # name: (vocab, embed, hidden, T, batch)
    "ptb-medium-b20": (10_000, 650, 650, 35, 20),
    "ptb-medium-b64": (10_000, 650, 650, 35, 64),
    "char-lm-b64": (80, 8, 256, 80, 64),
}
PS = (0.3, 0.5, 0.65)
IMPLS = ("structured", "element", "torch")


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
    return CharLM(vocab, embed, hidden, 2, p, per_element=impl == "element", time_major=True)


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} "
        "interleaved steps after 2 warm-up steps; ms per training step"
    )
    print(
        f"{'shape':<16} {'p':>5} {'structured':>11} {'element':>9} {'torch':>9} "
        f"{'elem/struct':>12} {'torch/struct':>13}"
    )
    key_speedup = None
    for name in args.shapes.split(","):
        vocab, embed, hidden, t, b = SHAPES[name]
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, vocab, (b, t), generator=g)
        y = torch.randint(0, vocab, (b, t), generator=g)
        for p in PS:
            torch.manual_seed(0)
            fns = {
                impl: train_step(build(impl, vocab, embed, hidden, p).train(), x, y)
                for impl in IMPLS
            }
            med = interleaved_medians(fns, args.repeats)
            s, e, tt = med["structured"], med["element"], med["torch"]
            print(
                f"{name:<16} {p:>5.2f} {s * 1e3:>11.1f} {e * 1e3:>9.1f} {tt * 1e3:>9.1f} "
                f"{e / s:>12.2f} {tt / s:>13.2f}",
                flush=True,
            )
            if name == "ptb-medium-b64" and p == 0.5:
                key_speedup = tt / s
    if key_speedup is not None:
        print(f"speedup_vs_torch_lstm_p0.5: {key_speedup:.2f}")


if __name__ == "__main__":
    main()
