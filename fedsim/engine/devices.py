"""The simulated device population: per-node speed, bandwidth and latency."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.config.schema import ConstantDist, LognormalDist, SystemConfig, TraceDist, UniformDist
from fedsim.engine.availability import Availability
from fedsim.engine.device_trace import load_trace, match_devices
from fedsim.errors import Problem, ScenarioError
from fedsim.registry import Registry

Sampler = Callable[[Any, int, np.random.Generator, str], np.ndarray]
DISTRIBUTIONS: Registry[Sampler] = Registry("distributions")


@DISTRIBUTIONS.register("constant", help="every node the same value")
def _constant(cfg: ConstantDist, n: int, rng: np.random.Generator, key: str) -> np.ndarray:
    return np.full(n, cfg.value)


@DISTRIBUTIONS.register("uniform", help="uniform on [low, high]")
def _uniform(cfg: UniformDist, n: int, rng: np.random.Generator, key: str) -> np.ndarray:
    return rng.uniform(cfg.low, cfg.high, size=n)


@DISTRIBUTIONS.register("lognormal", help="median * exp(sigma * N(0,1))")
def _lognormal(cfg: LognormalDist, n: int, rng: np.random.Generator, key: str) -> np.ndarray:
    return cfg.median * np.exp(cfg.sigma * rng.standard_normal(n))


@DISTRIBUTIONS.register("trace", help="CSV column, one row per node, cycled")
def _trace(cfg: TraceDist, n: int, rng: np.random.Generator, key: str) -> np.ndarray:
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise ScenarioError([Problem(f"{key}.path", f"file not found: {path}")])
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or cfg.column not in reader.fieldnames:
            raise ScenarioError(
                [
                    Problem(
                        f"{key}.column",
                        f"'{cfg.column}' is not a column of {path} (columns: {reader.fieldnames})",
                    )
                ]
            )
        try:
            values = np.array([float(row[cfg.column]) for row in reader])
        except ValueError as exc:
            raise ScenarioError([Problem(f"{key}.path", f"non-numeric value: {exc}")]) from None
    if len(values) == 0 or (values <= 0).any():
        raise ScenarioError([Problem(f"{key}.path", "needs at least one row, all values > 0")])
    return np.resize(values, n)


@dataclass(frozen=True)
class DeviceProfile:
    """One simulated device.

    Attributes
    ----------
    speed : float
        Compute speed relative to the reference device (2.0 = twice as fast).
    uplink_mbps, downlink_mbps : float
        Link bandwidths in megabits per second.
    availability : Availability or None
        When the device is online (from a device trace); ``None``: always.
    """

    speed: float
    uplink_mbps: float
    downlink_mbps: float
    availability: Availability | None = None


def sample_population(cfg: SystemConfig, num_nodes: int, seed: int) -> list[DeviceProfile]:
    """Draw every node's device profile from the ``system`` section (seeded)."""
    if cfg.trace is not None:
        return _traced_population(cfg, num_nodes, seed)
    rng = np.random.default_rng([seed, 0xDE71CE])
    columns = {
        key: DISTRIBUTIONS.get(dist.distribution)(dist, num_nodes, rng, f"system.{key}")
        for key, dist in (
            ("speed", cfg.speed),
            ("uplink_mbps", cfg.uplink_mbps),
            ("downlink_mbps", cfg.downlink_mbps),
        )
    }
    # Persistently slow devices (e.g. old phones) on top of the drawn distribution.
    columns["speed"] = columns["speed"].astype(float)
    columns["speed"][: cfg.slow_nodes] /= cfg.slow_node_slowdown
    return [
        DeviceProfile(float(s), float(u), float(d))
        for s, u, d in zip(
            columns["speed"], columns["uplink_mbps"], columns["downlink_mbps"], strict=True
        )
    ]


def _traced_population(cfg: SystemConfig, num_nodes: int, seed: int) -> list[DeviceProfile]:
    """Every node's device from ``system.trace``, matched to nodes by a seeded draw.

    A trace's per-sample time becomes a speed relative to ``seconds_per_sample``, so the
    clock's ``samples * seconds_per_sample / speed`` is the trace's time.
    """
    assert cfg.trace is not None
    trace = load_trace(cfg.trace.path)
    profiles = []
    for k in match_devices(len(trace), num_nodes, seed):
        device = trace[k]
        profiles.append(
            DeviceProfile(
                speed=cfg.seconds_per_sample * 1000.0 / device.ms_per_sample,
                uplink_mbps=device.uplink_kbps / 1000.0,
                downlink_mbps=device.downlink_kbps / 1000.0,
                availability=device.availability,
            )
        )
    return profiles
