"""The `ray` engine runs the same ServerApp and ClientApp as `inprocess`, and agrees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import fedsim
from fedsim.apps import APP_DIR, load_apps
from fedsim.cli.main import app
from fedsim.config.schema import RayEngine
from fedsim.engine import local_superlink
from fedsim.engine.ray_engine import federation_config
from fedsim.outputs.metrics_log import read_metrics
from tests.conftest import write_yaml


def test_every_engine_runs_the_one_flower_app() -> None:
    """The Ray engine submits fedsim/deploy/app; the in-process engine loads what it names."""
    from fedsim.client.app import app as client_app
    from fedsim.server.app import app as server_app

    assert load_apps(APP_DIR) == (server_app, client_app)


def test_joining_a_cluster_sets_no_local_cpu_count() -> None:
    local = federation_config(7, RayEngine(num_cpus=2))
    cluster = federation_config(7, RayEngine(num_cpus=2, ray_address="auto"))
    assert local["num-supernodes"] == 7 and local["init-args-num-cpus"] == 2
    assert "init-args-num-cpus" not in cluster  # ray.init refuses resources when joining


@pytest.mark.slow
def test_fedavg_gives_the_same_weights_on_inprocess_and_ray(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No stragglers, every client trains: both engines must reach the same model.

    Clients seed from (seed, partition, round), never from the engine, so only the
    order in which FedAvg sums the replies may differ (float rounding, ~1e-8).
    """
    tiny["system"] = {}
    tiny["engine"] = {"name": "ray", "num_cpus": 2, "object_store_mb": 128}
    started: list[tuple[set[int], set[int]]] = []
    original = local_superlink.started_by

    def record(root: int) -> tuple[set[int], set[int]]:
        started.append(original(root))
        return started[-1]

    monkeypatch.setattr(local_superlink, "started_by", record)
    ray_dir = tmp_path / "ray"
    cli = CliRunner().invoke(
        app, ["run", str(write_yaml(tmp_path / "s.yaml", tiny)), "--out", str(ray_dir), "-q"]
    )
    assert cli.exit_code == 0, cli.output
    ray_metrics = read_metrics(ray_dir)
    tiny["engine"] = {"name": "inprocess"}
    in_process = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "inprocess")

    a = np.load(ray_dir / "final_arrays.npz")
    b = np.load(in_process.run_dir / "final_arrays.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6)
    assert [r["round"] for r in ray_metrics] == [0, 1, 2]
    # Telemetry on Flower's grid (counted by the ServerApp's ObservedGrid) agrees too.
    for ray_round, local_round in zip(ray_metrics, in_process.metrics, strict=True):
        assert ray_round["participants"] == local_round["participants"]
        assert ray_round["bytes_up"] == local_round["bytes_up"]
        assert ray_round["train_loss"] == pytest.approx(local_round["train_loss"], abs=1e-6)
        # The clock kept on Flower's grid: the same virtual time (device speeds drawn
        # per partition, compute from the same train-samples, the same bytes).
        assert ray_round["virtual_time_s"] == local_round["virtual_time_s"]
    assert ray_metrics[-1]["participants"] == 4
    # The engine really ran Ray (a Flower run log exists), and left no process behind.
    assert (ray_dir / "flower" / "run.log").stat().st_size > 0  # what `flwr log` streamed
    ((tree, sessions),) = started
    assert len(sessions) >= 2  # the SuperLink's and the SuperExec's (Ray runs in the latter)
    assert local_superlink.leftovers(tree, sessions) == []


@pytest.mark.slow
def test_a_ray_run_with_stragglers_reports_what_inprocess_reports(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 27's acceptance: the same stragglers and virtual time as in-process.

    8 clients, half sampled per round, stragglers, dropouts and injected failures, a
    1 s deadline that cuts some replies. The fates are drawn per (seed, dispatch,
    partition) on both engines, so every count and the virtual time are equal exactly;
    the models agree within 1e-6 (Ray's actors and this process each train on one torch
    thread; measured: equal). The progress listener (what the bar is fed) sees each
    round once, in order, though the ServerApp runs in Flower's process.
    """
    from fedsim.outputs.metrics_log import listening
    from tests.conftest import strip_wall_clock
    from tests.engine.test_clock_on_flower_grid import _scenario

    scenario = _scenario(tiny)
    scenario["engine"] = {"name": "ray", "num_cpus": 2, "object_store_mb": 128}
    seen: list[int] = []
    with listening(lambda record: seen.append(record["round"])):
        on_ray = fedsim.run(fedsim.load_scenario(scenario), tmp_path / "ray")
    assert seen == [0, 1, 2, 3, 4]
    scenario["engine"] = {"name": "inprocess"}
    in_process = fedsim.run(fedsim.load_scenario(scenario), tmp_path / "inprocess")

    assert sum(r["stragglers"] for r in in_process.metrics) > 0
    ray_records, local_records = (strip_wall_clock(r.metrics) for r in (on_ray, in_process))
    counts = ("participants", "stragglers", "dropouts", "failures", "bytes_up", "bytes_down")
    for ray_round, local_round in zip(ray_records, local_records, strict=True):
        for key in (*counts, "virtual_time_s"):
            assert ray_round[key] == local_round[key], (ray_round["round"], key)
        for key, value in local_round.items():
            if isinstance(value, float):
                assert ray_round[key] == pytest.approx(value, abs=1e-6), key
    a, b = (np.load(r.run_dir / "final_arrays.npz") for r in (on_ray, in_process))
    for key in a.files:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6)
