"""One full DP-SGD step at batch 128: fedsim's fast clipping vs Opacus vs a loop.

For each model, side by side in one process with a fixed thread count: the
non-private step, then a DP step (forward, per-example clipping, Gaussian noise,
optimizer step) with each clipping mode. Modes are timed round-robin (interleaved) and
the median of --repeats runs after warm-up is reported.
LSTM models: the non-private baseline and the loop use ``nn.LSTM``, Opacus modes
Opacus's ``DPLSTM``, fedsim's fast mode ``fedsim.kernels.LSTM``: the same architecture.

Usage::

    python benchmarks/dp_clipping.py [--repeats 5] [--threads 2] [--device cpu]
        [--models cnn8,cnn28,lstm,charlstm] [--skip naive,opacus-hooks]
        [--recurrence step-loop|fused-forward|cudnn-gates]

``--recurrence`` overrides the device's route for the fast mode's LSTM recurrence
(``fedsim.kernels.recurrence_routes.DP_RECURRENCE``) to compare the routes on one device.

Every step is timed with device synchronisation (CUDA runs asynchronously).

Prints a table and, last, ``worst_fast_over_nonprivate: X``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import timing  # first: sets OMP_WAIT_POLICY before torch loads its OpenMP runtime
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.client.dp import PrivateGradient
from fedsim.config.schema import DPConfig
from fedsim.kernels import LSTM as FastLSTM
from fedsim.kernels.recurrence_routes import DP_RECURRENCE, ROUTES
from fedsim.models import build_model

BATCH = 128
MODES = ("naive", "opacus-hooks", "opacus-ghost", "fast")


class LSTMClassifier(nn.Module):
    """Input 28, hidden 128, T = 28: last hidden state to 10 classes."""

    def __init__(self, lstm: nn.Module) -> None:
        super().__init__()
        self.lstm, self.head = lstm, nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


class CharLM(nn.Module):
    """LEAF Shakespeare shape: vocab 80, embedding 8, 2 x 256 LSTM, T = 80."""

    def __init__(self, lstm: nn.Module) -> None:
        super().__init__()
        self.emb, self.lstm, self.dec = nn.Embedding(80, 8), lstm, nn.Linear(256, 80)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.lstm(self.emb(x))[0]).transpose(1, 2)  # (B, V, T)


def lstm_impl(mode: str, *args: int) -> nn.Module:
    """The LSTM each mode trains: the same shapes, three implementations."""
    if mode == "fast":
        return FastLSTM(*args)
    if mode.startswith("opacus"):
        from opacus.layers import DPLSTM

        return DPLSTM(*args, batch_first=True)
    return nn.LSTM(*args, batch_first=True)


def per_example_ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example (summed over positions for sequence outputs)."""
    loss = F.cross_entropy(out, y, reduction="none")
    return loss.flatten(1).sum(1) if loss.dim() > 1 else loss


Workload = tuple[Callable[[str], nn.Module], torch.Tensor, torch.Tensor]


def workloads() -> dict[str, Workload]:
    """Model factories (by mode) and one fixed batch each."""
    g = torch.Generator().manual_seed(0)

    def labels(n: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, n, (BATCH, *shape), generator=g)

    return {
        "cnn8": (
            lambda m: build_model("cnn", {}, (1, 8, 8), 10),
            torch.randn(BATCH, 1, 8, 8, generator=g),
            labels(10),
        ),
        "cnn28": (
            lambda m: build_model("cnn", {}, (1, 28, 28), 10),
            torch.randn(BATCH, 1, 28, 28, generator=g),
            labels(10),
        ),
        "lstm": (
            lambda m: LSTMClassifier(lstm_impl(m, 28, 128)),
            torch.randn(BATCH, 28, 28, generator=g),
            labels(10),
        ),
        "charlstm": (lambda m: CharLM(lstm_impl(m, 8, 256, 2)), labels(80, 80), labels(80, 80)),
    }


def step_fn(mode: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One full training step of ``mode`` (``nonprivate`` or a DP mode)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    if mode == "nonprivate":

        def plain() -> None:
            opt.zero_grad(set_to_none=True)
            per_example_ce(model(x), y).mean().backward()
            opt.step()

        return plain
    cfg = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, mode=mode)  # type: ignore[arg-type]
    grad = PrivateGradient(cfg, model, float(BATCH), torch.Generator().manual_seed(1))

    def private() -> None:
        opt.zero_grad(set_to_none=True)
        grad(model, per_example_ce, x, y)
        opt.step()

    return private


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", default="cnn8,cnn28,lstm,charlstm")
    parser.add_argument("--skip", default="", help="modes to skip, e.g. naive,opacus-hooks")
    parser.add_argument("--recurrence", choices=sorted(ROUTES), help="the fast LSTM's DP route")
    args = parser.parse_args()
    if args.recurrence:
        DP_RECURRENCE[args.device] = args.recurrence
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    print(
        f"torch {torch.__version__}, {args.device}, {args.threads} threads, batch {BATCH}, "
        f"LSTM DP route {DP_RECURRENCE.get(args.device, 'step-loop')}, "
        f"median of {args.repeats} interleaved runs after warm-up; "
        "ms, ratio = mode / non-private"
    )
    header = f"{'model':<9} {'nonprivate':>11}" + "".join(f" {m:>22}" for m in MODES)
    print(header)
    ratios: dict[str, dict[str, float]] = {}
    for name in args.models.split(","):
        factory, x, y = workloads()[name]
        x, y = x.to(args.device), y.to(args.device)
        fns = {}
        for mode in ("nonprivate", *[m for m in MODES if m not in skip]):
            torch.manual_seed(0)
            fns[mode] = step_fn(mode, factory(mode).to(args.device), x, y)
        med = timing.interleaved_medians(fns, args.repeats, sync=timing.device_sync(args.device))
        base = med["nonprivate"]
        row, ratios[name] = f"{name:<9} {base * 1e3:>11.1f}", {}
        for mode in MODES:
            if mode in skip:
                row += f" {'skipped':>22}"
                continue
            ratios[name][mode] = med[mode] / base
            row += f" {med[mode] * 1e3:>12.1f} ({med[mode] / base:>5.2f}x)"
        print(row, flush=True)
    for name, r in ratios.items():
        opacus = [r[m] for m in ("opacus-hooks", "opacus-ghost") if m in r]
        if opacus and "fast" in r:
            print(f"{name}_fast_speedup_vs_best_opacus: {min(opacus) / r['fast']:.2f}")
    worst = max(r["fast"] for r in ratios.values() if "fast" in r)
    print(f"worst_fast_over_nonprivate: {worst:.2f}")


if __name__ == "__main__":
    main()
