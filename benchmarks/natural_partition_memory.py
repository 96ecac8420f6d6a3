"""Peak memory of loading and naturally partitioning a 1,000,000-example ``.npz``.

A synthetic file (1,000,000 examples of shape (1, 8, 8) float32, 10 classes, string
client ids ``writer-00000`` ... over 10,000 writers with Zipf-like sizes, plus a
100,000-example test split with its own ids) is written by one child process; a second
child loads the scenario (``num_clients`` omitted: one client per id, so loading counts
the ids), builds the run's federated data (the natural partition and every client's test
split) and reports its own peak RSS. Two processes, so that writing the file does not
count towards the peak of reading it.

Usage::

    python benchmarks/natural_partition_memory.py [--dir /tmp] [--examples 1000000]

Last line: ``peak_rss_gib: X`` (the loading process).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make(path: Path, examples: int, clients: int) -> None:
    """Write the synthetic natural-id file."""
    rng = np.random.default_rng(0)
    # Writer sizes vary as in FEMNIST (a long tail); every writer has at least one example.
    weights = 1.0 / np.arange(1, clients + 1) ** 0.5
    ids = np.concatenate(
        [np.arange(clients), rng.choice(clients, examples - clients, p=weights / weights.sum())]
    )
    rng.shuffle(ids)
    names = np.char.add("writer-", np.char.zfill(ids.astype(str), 5))
    n_test = examples // 10
    np.savez(
        path,
        x=rng.random((examples, 1, 8, 8), dtype=np.float32),
        y=rng.integers(0, 10, examples),
        client_id=names,
        x_test=rng.random((n_test, 1, 8, 8), dtype=np.float32),
        y_test=rng.integers(0, 10, n_test),
        client_id_test=names[rng.integers(0, examples, n_test)],
    )


def measure(path: Path) -> None:
    """Load and partition as a run does; print the figures of this process."""
    import fedsim
    from fedsim.data.federated import federated_data

    start = time.perf_counter()
    scenario = fedsim.load_scenario(
        {"name": "natural-1m", "data": {"dataset": f"npz:{path}", "partitioner": "natural"}}
    )
    data = federated_data(scenario.data, scenario.seed)
    elapsed = time.perf_counter() - start
    assert data.test_parts is not None
    sizes = np.array([len(p) for p in data.parts])
    print(
        f"examples: {len(data.y)}  clients: {data.num_clients}  "
        f"(num_clients={scenario.data.num_clients})"
    )
    print(
        f"examples per client: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}"
    )
    print(f"load + partition: {elapsed:.1f} s")
    print(f"peak_rss_gib: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="where the file is written")
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--step", choices=("make", "measure"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "make":
        make(args.path, args.examples, args.clients)
        return
    if args.step == "measure":
        measure(args.path)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "natural.npz"
        me = [sys.executable, __file__, "--path", str(path)]
        sizes = ["--examples", str(args.examples), "--clients", str(args.clients)]
        subprocess.run([*me, "--step", "make", *sizes], check=True)
        print(f"file: {path.stat().st_size / 2**20:.0f} MiB")
        subprocess.run([*me, "--step", "measure"], check=True)


if __name__ == "__main__":
    main()
