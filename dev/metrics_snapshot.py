"""Write the metrics of every shipped scenario (every variant, first seed) as JSON.

Used to show that a refactor leaves the numbers alone: run it before and after (same
machine, same torch) and compare the two files with ``--compare``. Wall-clock fields
(``*duration*``, ``*wall*``, ``*_time_s`` measured on the host) are dropped: they are
real time, not results. Usage::

    python dev/metrics_snapshot.py OUT.json [--rounds 2]
    python dev/metrics_snapshot.py --compare BEFORE.json AFTER.json

``dev/metrics_c7b47b8.json`` is the snapshot of commit c7b47b8 (before the layout moved),
taken with ``PYTHONPATH`` pointing at a checkout of it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WALL_CLOCK = ("duration", "wall", "elapsed", "seconds_real", "real_s", "host_")


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _clean(v) for k, v in value.items() if not any(marker in k for marker in WALL_CLOCK)
        }
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def snapshot(rounds: int) -> dict[str, Any]:
    """Run every shipped scenario's variants (first seed) and return their metrics."""
    from fedsim.scenario_loading import expand  # an old import path: kept by the shims

    import fedsim

    out: dict[str, Any] = {}
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        scenario = fedsim.load_scenario(path, [f"rounds={rounds}", "output.plots=false"])
        runs = expand(scenario)
        for concrete in [r for r in runs if r.seed == runs[0].seed]:
            with tempfile.TemporaryDirectory() as tmp:
                result = fedsim.run(concrete, Path(tmp) / "run")
            key = f"{path.stem}/{concrete.variant or 'run'}/seed{concrete.seed}"
            out[key] = _clean(result.metrics)
            print(key, file=sys.stderr, flush=True)
    return out


def main() -> int:
    """Write a snapshot, or compare two."""
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compare", nargs=2)
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.compare)
        common = sorted(set(before) & set(after))
        differ = [k for k in common if before[k] != after[k]]
        for key in differ:
            print("DIFFERENT:", key)
        for key in sorted(set(before) - set(after)):
            print("MISSING (in the first file only):", key)
        for key in sorted(set(after) - set(before)):
            print("NEW (in the second file only, not compared):", key)
        print(f"{len(common) - len(differ)} of {len(common)} runs in both files identical")
        return 1 if differ or set(before) - set(after) else 0
    Path(args.out).write_text(json.dumps(snapshot(args.rounds), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
