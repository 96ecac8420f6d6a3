"""GPU scaling: one by one, stacked, workers x stacked, a hand loop and the FLOP floor.

Two workloads (issue 29), each run side by side in one process on ``--device``:

- ResNet-8 (``resnet-gn``): 200 clients of 90 random CIFAR-shaped examples, 100 a
  round, batch 32, 2 local epochs, SGD;
- MLP [64] on MNIST-1D-shaped data: 1,000 clients a round, batch 8, 1 local epoch.

Contenders (``fedsim.run`` on the in-process engine unless said otherwise):

- ``one_by_one``: the default engine, each client's job through the ClientApp;
- ``stacked``: ``engine.batch_clients: auto`` (the round's clients trained together);
- ``workers_stacked``: ``engine.workers: 2`` with ``batch_clients`` (each worker stacks
  its own nodes);
- ``hand_loop``: every client's local steps in a plain PyTorch loop (load weights,
  forward, backward, SGD), no fedsim;
- ``floor``: the FLOP floor, every example of the round in one batch per step (as many
  steps as one client takes), no fedsim.

A contender's round time is its fastest round after the first (other load only ever
adds time). pfl-research is not installed here, so it is no contender in this script;
``../shared/gpu/`` has the set-up of the figure the issue quotes.

Usage::

    python benchmarks/gpu_scaling.py --device cuda
    python benchmarks/gpu_scaling.py --device cpu --quick    # what CI and a CPU run

``--quick`` shrinks both workloads (8 ResNet clients of 2-width stages a round, 64 MLP
clients, 2 rounds) so the code paths run in seconds. The printed figures are
``resnet8_round_s``, ``mlp_updates_per_s``, ``stacked_over_floor`` (ResNet-8 stacked
round time over the floor's) and the ratios between contenders; the last line is
``stacked_over_floor: X``.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from engine_overhead import clear_process_caches, round_seconds

import fedsim
from fedsim.models import build_model


def _workload(
    clients: int,
    per_round: int,
    examples: int,
    batch: int,
    epochs: int,
    shape: tuple[int, ...],
    model: dict[str, Any],
    rounds: int,
) -> dict[str, Any]:
    return {
        "clients": clients,
        "per_round": per_round,
        "examples": examples,
        "batch": batch,
        "epochs": epochs,
        "shape": shape,
        "model": model,
        "rounds": rounds,
    }


def workloads(quick: bool) -> dict[str, dict[str, Any]]:
    """The two workloads' sizes."""
    resnet: dict[str, Any] = {"name": "resnet-gn", "params": {}}
    mlp: dict[str, Any] = {"name": "mlp", "params": {"hidden": [64]}}
    if quick:
        small = {"name": "resnet-gn", "params": {"widths": [4, 8, 8]}}
        return {
            "resnet8": _workload(16, 8, 24, 8, 1, (3, 16, 16), small, 2),
            "mlp": _workload(64, 64, 16, 8, 1, (40,), mlp, 2),
        }
    return {
        "resnet8": _workload(200, 100, 90, 32, 2, (3, 32, 32), resnet, 4),
        "mlp": _workload(1000, 1000, 40, 8, 1, (40,), mlp, 4),
    }


def write_data(root: Path, w: dict[str, Any]) -> Path:
    """Random examples in the workload's shape, one natural client id per client."""
    rng = np.random.default_rng(0)
    n = w["clients"] * w["examples"]
    path = root / f"data-{'x'.join(map(str, w['shape']))}-{n}.npz"
    np.savez(
        path,
        x=rng.normal(size=(n, *w["shape"])).astype(np.float32),
        y=rng.integers(0, 10, n),
        client_id=np.repeat(np.arange(w["clients"]), w["examples"]),
        x_test=rng.normal(size=(64, *w["shape"])).astype(np.float32),
        y_test=rng.integers(0, 10, 64),
    )
    return path


def scenario(w: dict[str, Any], data: Path, device: str, engine: dict[str, Any]) -> Any:
    """The workload as a scenario on ``engine``."""
    return fedsim.load_scenario(
        {
            "name": "gpu-scaling",
            "seed": 0,
            "rounds": w["rounds"],
            "data": {
                "dataset": {"name": "npz", "path": str(data)},
                "num_clients": w["clients"],
                "partitioner": {"name": "natural"},
            },
            "model": w["model"],
            "client": {
                "local_epochs": w["epochs"],
                "batch_size": w["batch"],
                "optimizer": {"name": "sgd", "lr": 0.05},
            },
            "strategy": {
                "name": "fedavg",
                "params": {
                    "fraction_train": w["per_round"] / w["clients"],
                    "min_available_nodes": w["clients"],
                },
            },
            "engine": {"name": "inprocess", "device": device, **engine},
            "output": {"plots": False, "evaluate_every": 1000},
        }
    )


def fedsim_round(
    w: dict[str, Any], data: Path, device: str, engine: dict[str, Any], out: Path
) -> float:
    """Fastest round after the first of one ``fedsim.run``."""
    clear_process_caches()
    fedsim.run(scenario(w, data, device, engine), out)
    return min(round_seconds(out)[1:])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def hand_round(w: dict[str, Any], device: str, floor: bool) -> float:
    """One round of the workload's local steps in plain PyTorch (best of two rounds).

    ``floor``: the round's examples in one batch per step instead of client by client.
    """
    torch.manual_seed(0)
    model = build_model(w["model"]["name"], w["model"]["params"], w["shape"], 10).to(device)
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(w["per_round"], w["examples"], *w["shape"], device=device)
    y = torch.randint(0, 10, (w["per_round"], w["examples"]), device=device)
    steps = w["epochs"] * math.ceil(w["examples"] / w["batch"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    best = math.inf
    for _ in range(2):
        _sync(device)
        start = time.perf_counter()
        if floor:
            xb = x[:, : w["batch"]].reshape(-1, *w["shape"])
            yb = y[:, : w["batch"]].reshape(-1)
            for _ in range(steps):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
        else:
            for k in range(w["per_round"]):
                model.load_state_dict(start_state)
                for s in range(steps):
                    lo = (s * w["batch"]) % w["examples"]
                    opt.zero_grad()
                    F.cross_entropy(
                        model(x[k, lo : lo + w["batch"]]), y[k, lo : lo + w["batch"]]
                    ).backward()
                    opt.step()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cpu, cuda, cuda:N")
    parser.add_argument("--quick", action="store_true", help="tiny workloads (CI, CPU)")
    parser.add_argument("--workers", type=int, default=2, help="workers of workers_stacked")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    if args.device == "cpu":
        torch.set_num_threads(1)
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-scaling-") as tmp:
        root = Path(tmp)
        for name, w in workloads(args.quick).items():
            data = write_data(root, w)
            f: dict[str, float] = {}
            f["one_by_one"] = fedsim_round(w, data, args.device, {}, root / f"{name}-1")
            stacked = {"batch_clients": "auto"}
            f["stacked"] = fedsim_round(w, data, args.device, stacked, root / f"{name}-s")
            with_workers = {**stacked, "workers": args.workers}
            f["workers_stacked"] = fedsim_round(
                w, data, args.device, with_workers, root / f"{name}-w"
            )
            f["hand_loop"] = hand_round(w, args.device, floor=False)
            f["floor"] = hand_round(w, args.device, floor=True)
            figures[name] = f
            for contender, seconds in f.items():
                print(f"{name}_{contender}_round_s: {seconds:.4f}")
            for contender in ("one_by_one", "workers_stacked", "hand_loop"):
                print(f"{name}_{contender}_over_stacked: {f[contender] / f['stacked']:.2f}")
    r, m = figures["resnet8"], figures["mlp"]
    mlp_per_round = workloads(args.quick)["mlp"]["per_round"]
    print(f"device: {args.device}{' (quick)' if args.quick else ''}")
    print(f"resnet8_round_s: {min(r['stacked'], r['workers_stacked']):.4f}")
    print(f"mlp_updates_per_s: {mlp_per_round / min(m['stacked'], m['workers_stacked']):.0f}")
    print(f"stacked_over_floor: {r['stacked'] / r['floor']:.2f}")


if __name__ == "__main__":
    main()
