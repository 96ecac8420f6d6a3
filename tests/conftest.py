"""Shared fixtures: a tiny scenario, an isolated dataset cache, quiet Flower logs."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 3,
    "rounds": 2,
    "data": {
        "dataset": "digits",
        "num_clients": 4,
        "partitioner": {"name": "iid"},
    },
    "model": {"name": "mlp", "params": {"hidden": [16]}},
    "client": {"local_epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1}},
    "strategy": {"name": "fedavg", "params": {"fraction_train": 1.0}},
    "system": {"speed": {"distribution": "lognormal", "sigma": 0.5}},
    "output": {"plots": False, "target_accuracy": 0.5},
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path_factory.getbasetemp() / "fedsim-cache"
    monkeypatch.setenv("FEDSIM_CACHE_DIR", str(cache))
    import flwr  # noqa: F401

    logging.getLogger("flwr").setLevel(logging.ERROR)


@pytest.fixture
def tiny() -> dict[str, Any]:
    """A 4-client, 2-round digits scenario that runs in about a second."""
    return copy.deepcopy(TINY)


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def block_data(sizes: list[int], features: int, num_classes: int, seed: int = 0) -> Any:
    """Generated FederatedData: client k owns the k-th consecutive block of ``sizes``."""
    import itertools

    import numpy as np

    from fedsim.data.federated import FederatedData

    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.random((n, features), dtype=np.float32)
    y = rng.integers(0, num_classes, n).astype(np.int64)
    bounds = np.cumsum([0, *sizes])
    parts = [np.arange(a, b, dtype=np.int64) for a, b in itertools.pairwise(bounds)]
    return FederatedData(x, y, parts, x[:2], y[:2], num_classes=num_classes)


def run_with_client_app(scenario: Any, client_app: Any, run_dir: Path) -> Any:
    """Run ``scenario`` in-process with ``client_app`` as the ClientApp; return the grid.

    For tests whose clients misbehave: ``client_app`` is any ``(Message, Context) ->
    Message`` callable (usually one that wraps fedsim's own ClientApp).
    """
    from flwr.app import Context, RecordDict

    from fedsim import wire
    from fedsim.config.sources import to_yaml
    from fedsim.engine.inprocess_run import build_grid
    from fedsim.server.app import app as server_app

    run_dir.mkdir()
    resolved = run_dir / "scenario.resolved.yaml"
    resolved.write_text(to_yaml(scenario))
    run_config = {wire.RUN_SCENARIO: str(resolved), wire.RUN_DIR: str(run_dir)}
    grid = build_grid(client_app, scenario, run_config)
    server_app(grid, Context(1, 1, {}, RecordDict(), run_config))
    return grid


def strip_wall_clock(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics records without their wall-clock fields (those differ between equal runs)."""
    from fedsim.outputs.metrics_log import WALL_CLOCK_FIELDS

    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in records]


def same_final_arrays(a: Path, b: Path) -> bool:
    """Whether two run directories' ``final_arrays.npz`` hold the same arrays exactly."""
    import numpy as np

    wa, wb = np.load(a / "final_arrays.npz"), np.load(b / "final_arrays.npz")
    return sorted(wa.files) == sorted(wb.files) and all(
        np.array_equal(wa[k], wb[k]) for k in wa.files
    )


def run_killed_in_round(
    scenario: Any, run_dir: Path, server_round: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run ``scenario`` in ``run_dir`` with the ServerApp dying in ``server_round``.

    The death comes at the round's central evaluation, after the checkpoint of the round
    before; the run directory is then what a killed run leaves for ``fedsim.resume``.
    """
    import fedsim
    from fedsim import server

    original = server.RoundRecorder.__call__

    def dies(self: Any, r: int, arrays: Any) -> Any:
        if r == server_round:
            raise KeyboardInterrupt("killed")
        return original(self, r, arrays)

    with monkeypatch.context() as patched:
        patched.setattr(server.RoundRecorder, "__call__", dies)
        with pytest.raises(KeyboardInterrupt):
            fedsim.run(scenario, run_dir)
