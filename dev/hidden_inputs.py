"""Mutate shipped scenarios and data files; `fedsim validate` must answer each one well.

    python dev/hidden_inputs.py [--count N] [--seed S] [--out DIR] [--batch B]

Writes ``--count`` mutated inputs (scenarios, and the data files they point at) under
``--out`` and runs ``fedsim validate`` on them, ``--batch`` files per call, each call
bounded by a timeout. An answer is good when the call exits 0 (the mutation happened to
be valid) or 2 (a user error: one ``error:`` line per problem), prints no traceback and
returns in time. A batch that misbehaves is rerun file by file to name the culprit.
The last line is ``mutations N: ok A, user errors U, tracebacks T, hangs H, other O``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
FEDSIM = [sys.executable, "-c", "from fedsim.cli.main import main; main()"]
TIMEOUT_S = 600  # one validate call (a batch): each file loads its data, on a busy machine

Mutation = Callable[[random.Random, dict[str, Any], Path], "str | dict[str, Any]"]
WEIRD: list[Any] = [
    None, -1, 0, 2.0, -0.5, 1e308, float("nan"), "x", "", [], {}, [1, [2]], True,
    "9" * 5000, "a" * 10_000, {"name": "no-such-thing"}, "pkg.module:Missing",
]  # fmt: skip


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(node, list) and node:
        return [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))]
    return [path]


def _set(node: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _weird_value(rng: random.Random, s: dict[str, Any], tmp: Path) -> dict[str, Any]:
    path = rng.choice([p for p in _leaves(s) if p])
    _set(s, path, copy.deepcopy(rng.choice(WEIRD)))
    return s


def _drop_key(rng: random.Random, s: dict[str, Any], tmp: Path) -> dict[str, Any]:
    path = rng.choice([p for p in _leaves(s) if p])
    node: Any = s
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return s


def _unknown_key(rng: random.Random, s: dict[str, Any], tmp: Path) -> dict[str, Any]:
    section = rng.choice([k for k, v in s.items() if isinstance(v, dict)] or ["data"])
    s.setdefault(section, {})["colour"] = "blue"
    return s


def _text_damage(rng: random.Random, s: dict[str, Any], tmp: Path) -> str:
    text = yaml.safe_dump(s, sort_keys=False)
    how = rng.randrange(5)
    if how == 0:  # cut anywhere
        return text[: rng.randrange(1, len(text))]
    if how == 1:  # a key written twice
        return text + f"rounds: {rng.randrange(1, 9)}\n"
    if how == 2:  # nesting no parser follows
        d = rng.choice([50, 5000, 50_000])
        return text + "sweep: " + "[" * d + "]" * d + "\n"
    if how == 3:  # an alias bomb
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
        return text + "\n".join(lines) + "\n"
    noise = bytes(rng.randrange(256) for _ in range(200))  # binary garbage
    return text + noise.decode("latin-1")


def _npz_file(rng: random.Random, s: dict[str, Any], tmp: Path) -> dict[str, Any]:
    n = rng.choice([0, 1, 30, 200])
    shape = rng.choice([(8, 8), (1, 8, 8), (8, 8, 1), (16, 16, 3), (3, 2, 2), (40,), (5, 5, 5, 5)])
    x = np.random.default_rng(rng.randrange(99)).random((n, *shape)).astype(np.float32)
    y = np.arange(n) % 10
    damage = rng.randrange(7)
    arrays: dict[str, Any] = {"x": x, "y": y}
    if damage == 1 and n:
        x.flat[0] = np.nan
    elif damage == 2:
        arrays["y"] = y * 1_000_000
    elif damage == 3:
        arrays["y"] = np.array(["a"] * n)
    elif damage == 4:
        del arrays["y"]
    path = tmp / f"data-{rng.randrange(10**9)}.npz"
    np.savez(path, **arrays)
    if damage == 5:
        path.write_bytes(path.read_bytes()[: rng.randrange(1, max(2, path.stat().st_size))])
    elif damage == 6:
        path.write_bytes(bytes(rng.randrange(256) for _ in range(300)))
    s["data"] = {**s.get("data", {}), "dataset": {"name": "npz", "path": str(path)}}
    s["data"].pop("partitioner", None)
    return s


def _cifar_folder(rng: random.Random, s: dict[str, Any], tmp: Path) -> dict[str, Any]:
    root = tmp / f"cifar-{rng.randrange(10**9)}"
    root.mkdir()
    rows = rng.choice([3, 4])
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        labels = [rng.randrange(12) for _ in range(rng.choice([rows, rows - 1]))]
        data: Any = np.zeros((rows, rng.choice([3072, 3000])), dtype=np.uint8)
        doc = {b"data": data, b"labels": labels}
        if rng.random() < 0.2:
            doc = {b"labels": labels}
        (root / name).write_bytes(pickle.dumps(doc, protocol=2))
    s["data"] = {**s.get("data", {}), "dataset": {"name": "cifar", "path": str(root)}}
    return s


def _trace_file(rng: random.Random, s: dict[str, Any], tmp: Path) -> dict[str, Any]:
    path = tmp / f"trace-{rng.randrange(10**9)}"
    kind = rng.randrange(6)
    if kind == 0:
        path.write_bytes(bytes(range(256)) * 20)
    elif kind == 1:
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == 2:
        path.write_text('{"devices": [{"speed": ' + "1" * 10_000 + "}]}")
    elif kind == 3:
        path.write_text("speed\n1.0\n-2\nnan\n")
    elif kind == 4:
        os.mkfifo(path)
    else:
        path = Path(rng.choice(["/etc/hosts", "/proc/self/status", "/dev/null", "/proc/kcore"]))
    system = s.setdefault("system", {}) or {}
    s["system"] = system
    if rng.random() < 0.5:
        system["speed"] = {"distribution": "trace", "path": str(path)}
    else:
        for k in ("speed", "uplink_mbps", "downlink_mbps", "slow_nodes"):
            system.pop(k, None)
        system["trace"] = {"path": str(path)}
    return s


MUTATIONS: list[Mutation] = [
    _weird_value, _weird_value, _weird_value, _drop_key, _unknown_key, _text_damage,
    _npz_file, _cifar_folder, _trace_file,
]  # fmt: skip


def make(count: int, seed: int, out: Path) -> list[Path]:
    """Write ``count`` mutated scenarios (and their data files) into ``out``."""
    rng = random.Random(seed)
    shipped = sorted((ROOT / "scenarios").glob("*.yaml"))
    files = []
    for i in range(count):
        source = rng.choice(shipped)
        scenario = yaml.safe_load(source.read_text())
        mutated = rng.choice(MUTATIONS)(rng, scenario, out)
        path = out / f"m{i:04d}-{source.stem}.yaml"
        if isinstance(mutated, str):
            path.write_text(mutated, encoding="utf-8", errors="surrogateescape")
        else:
            path.write_text(yaml.safe_dump(mutated, sort_keys=False))
        files.append(path)
    return files


def judge(files: list[Path], cwd: Path) -> dict[Path, str]:
    """``ok``, ``user error``, ``traceback``, ``hang`` or ``other`` for each file."""
    try:
        proc = subprocess.run(
            [*FEDSIM, "validate", *map(str, files)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        if len(files) == 1:
            return {files[0]: "hang"}
        return {f: v for one in files for f, v in judge([one], cwd).items()}
    out = proc.stdout + proc.stderr
    if "Traceback" in out or proc.returncode not in (0, 2):
        if len(files) == 1:
            return {files[0]: "traceback" if "Traceback" in out else "other"}
        return {f: v for one in files for f, v in judge([one], cwd).items()}
    verdict = {}
    for f in files:
        said = [line for line in out.splitlines() if line.startswith((f"{f}:", f"error: {f}:"))]
        if any(line.startswith("error:") for line in said):
            verdict[f] = "user error"
        elif any(": ok" in line for line in said):
            verdict[f] = "ok"
        else:
            verdict[f] = "other"
    return verdict


def main() -> None:
    """Make the mutations, judge them, print the tally (exit 1 on any bad answer)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("hidden-inputs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    files = make(args.count, args.seed, out)
    verdicts: dict[Path, str] = {}
    for start in range(0, len(files), args.batch):
        verdicts.update(judge(files[start : start + args.batch], ROOT))  # shipped relative paths
    bad = {f: v for f, v in verdicts.items() if v in ("traceback", "hang", "other")}
    for f, v in sorted(bad.items()):
        print(f"{v}: {f}")
    tally = {k: sum(v == k for v in verdicts.values()) for k in
             ("ok", "user error", "traceback", "hang", "other")}  # fmt: skip
    print(json.dumps({"mutations": len(files), **tally}))
    print(
        f"mutations {len(files)}: ok {tally['ok']}, user errors {tally['user error']}, "
        f"tracebacks {tally['traceback']}, hangs {tally['hang']}, other {tally['other']}"
    )
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
