"""Peak memory of one DP-SGD step as layers widen: RGP vs fast clipping vs Opacus.

The model reads sequences (B, T, w): Linear(w, w) -> ReLU -> Linear(w, w) -> ReLU ->
mean over the T positions -> Linear(w, 10), so each wide layer's per-example gradient
is a sum over T positions (what makes per-example gradients expensive). For each width
and mode, one child process builds the model and a batch, reads its resident set size,
runs one whole DP step (forward, clipping, noise, the ``.grad`` fill) and reports the
peak resident set size (``ru_maxrss``) above that baseline: the step's own peak
allocation, as the OS saw it. Modes: ``fast`` (fedsim's kernels: ghost norms or
materialised per-example gradients, whichever is cheaper), ``rgp`` at ranks 8 and 64
(carriers), ``opacus-hooks`` (Opacus's GradSampleModule, materialised per-example
gradients) and the non-private step.

Usage::

    MALLOC_ARENA_MAX=1 python benchmarks/rgp_memory.py [--widths 256,512,1024,2048]
        [--batch 32] [--positions 16] [--repeats 3]

Prints a table (MiB, median over --repeats child processes) and, last,
``widest: rgp-r8 / fast = X, rgp-r8 / opacus-hooks = Y``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

MODES = ("non-private", "fast", "rgp-r8", "rgp-r64", "opacus-hooks")


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def child(mode: str, width: int, batch: int, positions: int) -> None:
    """One step in this process; print the step's peak RSS above the baseline, KiB."""
    import torch
    import torch.nn.functional as F
    from flwr.app import RecordDict
    from torch import nn

    from fedsim.client.dp import private_gradient
    from fedsim.client.rgp import RGPGradient  # noqa: F401  (registers mode rgp)
    from fedsim.config.client import DPConfig

    torch.set_num_threads(1)

    class MeanOverPositions(nn.Module):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h.mean(1)

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        MeanOverPositions(),
        nn.Linear(width, 10),
    )
    x = torch.randn(batch, positions, width)
    y = torch.randint(0, 10, (batch,))

    def loss(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, t, reduction="none")

    if mode == "non-private":
        step = None
    elif mode.startswith("rgp"):
        cfg = DPConfig(mode="rgp", rank=int(mode.split("-r")[1]))
        step = private_gradient(cfg, model, batch, torch.Generator(), RecordDict())
    else:
        cfg = DPConfig(mode=mode)  # type: ignore[arg-type]
        step = private_gradient(cfg, model, batch, torch.Generator(), RecordDict())
    base = _rss_kib()
    if step is None:
        loss(model(x), y).mean().backward()
    else:
        step(model, loss, x, y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kib": max(peak - base, 0)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="256,512,1024,2048")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--positions", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "WIDTH"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.batch, args.positions)
        return
    widths = [int(w) for w in args.widths.split(",")]
    print(f"batch {args.batch}, positions {args.positions}; peak MiB of one step above baseline")
    print("| width | " + " | ".join(MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    table: dict[int, dict[str, float]] = {}
    for width in widths:
        row: dict[str, float] = {}
        for mode in MODES:
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        mode,
                        str(width),
                        "--batch",
                        str(args.batch),
                        "--positions",
                        str(args.positions),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_kib"] / 1024)
            row[mode] = statistics.median(runs)
        table[width] = row
        print(f"| {width} | " + " | ".join(f"{row[m]:.1f}" for m in MODES) + " |", flush=True)
    wide = table[widths[-1]]
    print(
        f"widest: rgp-r8 / fast = {wide['rgp-r8'] / max(wide['fast'], 1e-9):.2f}, "
        f"rgp-r8 / opacus-hooks = {wide['rgp-r8'] / max(wide['opacus-hooks'], 1e-9):.2f}"
    )


if __name__ == "__main__":
    main()
