"""Write the synthetic device trace shipped in ``scenarios/traces/`` (no network needed).

Devices in FedScale's style: per-sample compute time and link bandwidths drawn
lognormal (a phone fleet's long tail), and availability as on/off intervals within a
repeating period (here two minutes of virtual time, so that a short run sees devices
come and go; real traces span days). Deterministic: the same file every time.

Usage::

    python dev/make_device_trace.py [--out scenarios/traces/synthetic-devices.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

PERIOD_S = 120.0


def make(num_devices: int, seed: int) -> dict[str, object]:
    """Return the trace as a JSON-ready mapping."""
    rng = np.random.default_rng(seed)
    devices = []
    for _ in range(num_devices):
        # Online in 1-4 sessions of 5-40 s each, placed without overlap in the period.
        sessions = int(rng.integers(1, 5))
        cuts = np.sort(rng.uniform(0, PERIOD_S, size=2 * sessions))
        online = []
        for start, end in cuts.reshape(-1, 2):
            length = min(end - start, float(rng.uniform(5.0, 40.0)))
            if length >= 1.0:
                online.append([round(float(start), 2), round(float(start + length), 2)])
        if not online:
            online = [[0.0, 30.0]]
        devices.append(
            {
                "ms_per_sample": round(float(40.0 * np.exp(0.6 * rng.standard_normal())), 2),
                "uplink_kbps": round(float(2000.0 * np.exp(0.8 * rng.standard_normal())), 1),
                "downlink_kbps": round(float(10000.0 * np.exp(0.8 * rng.standard_normal())), 1),
                "online": online,
            }
        )
    return {"period_s": PERIOD_S, "devices": devices}


def main() -> None:
    """Write the trace file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("scenarios/traces/synthetic-devices.json"))
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    trace = make(args.devices, args.seed)
    devices = ",\n".join(f"  {json.dumps(d)}" for d in trace["devices"])  # type: ignore[attr-defined]
    text = f'{{"period_s": {trace["period_s"]}, "devices": [\n{devices}\n]}}\n'
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
