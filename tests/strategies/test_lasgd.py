"""LASGD: the merge keeps the workers' mean, τ=0 with H=1 is synchronous averaging
(FedAvg), η=0 makes every worker the snapshot average, same seed same metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

import fedsim
from fedsim import wire
from fedsim.clients.app import app as client_app
from fedsim.clients.lasgd import KEPT_MODEL, load_merged
from fedsim.data.federated import federated_data
from fedsim.engine.inprocess import InProcessGrid
from fedsim.engine.inprocess_engine import build_grid
from fedsim.models import build_model
from fedsim.outputs.metrics_log import WALL_CLOCK_FIELDS
from fedsim.scenario_loading import to_yaml
from fedsim.server import build_strategy
from fedsim.strategies.lasgd import LASGD, SnapshotAverager

Model = dict[str, np.ndarray]


def _f64(record: ArrayRecord) -> Model:
    return {k: v.numpy().astype(np.float64) for k, v in record.items()}


class Watcher:
    """Wraps the ClientApp: records each worker's start model and snapshot per block.

    The start model is what the worker trains from: for FedAvg the received model, for
    LASGD ``a*x + b`` from the kept model x, recomputed here in float64. ``starts``
    (optional) replaces the first LASGD block's model per node (workers that begin
    apart).
    """

    def __init__(self, starts: dict[int, Model] | None = None) -> None:
        self.starts = starts or {}
        self.start: dict[tuple[int, int], Model] = {}
        self.snapshot: dict[tuple[int, int], Model] = {}

    def __call__(self, msg: Message, ctx: Context) -> Message:
        node, config = ctx.node_id, msg.content[wire.CONFIG]
        block = int(config[wire.SERVER_ROUND])  # type: ignore[arg-type]
        received = msg.content[wire.ARRAYS]
        if msg.metadata.message_type == f"train.{wire.LASGD_ACTION}":
            scale = float(config[wire.LASGD_SCALE])  # type: ignore[arg-type]
            if scale == 0.0 and node in self.starts:
                received = ArrayRecord({k: Array(v) for k, v in self.starts[node].items()})
                msg.content[wire.ARRAYS] = received
            offset = _f64(received)
            kept = ctx.state.array_records.get(KEPT_MODEL)
            x = _f64(kept) if kept is not None else {k: 0.0 * v for k, v in offset.items()}
            self.start[node, block] = {k: scale * x[k] + (offset[k] if offset else 0.0) for k in x}
        else:
            self.start[node, block] = _f64(received)
        reply = client_app(msg, ctx)
        if not reply.has_error():
            self.snapshot[node, block] = _f64(reply.content[wire.ARRAYS])
        return reply


def _start(tiny: dict[str, Any], tmp_path: Path, client: Watcher) -> tuple[Any, InProcessGrid]:
    """Run the scenario's strategy on the in-process grid through ``client``."""
    scenario = fedsim.load_scenario(tiny)
    resolved = tmp_path / "scenario.resolved.yaml"
    resolved.write_text(to_yaml(scenario))
    run_config = {wire.RUN_SCENARIO: str(resolved), wire.RUN_DIR: str(tmp_path)}
    grid = build_grid(client, scenario, run_config)  # type: ignore[arg-type]
    data = federated_data(scenario.data, scenario.seed)
    torch.manual_seed(scenario.seed)
    model = build_model(scenario.model.name, scenario.model.params, data.input_shape, 10)
    strategy = build_strategy(scenario)
    strategy.start(
        grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=tiny["rounds"]
    )
    return strategy, grid


def _lasgd(tiny: dict[str, Any], **params: Any) -> dict[str, Any]:
    tiny["client"]["local_steps"] = 3
    tiny["system"].update(slow_nodes=1, slow_node_slowdown=4.0)  # lognormal σ=0.5 + one 4x
    tiny["rounds"] = 4
    tiny["strategy"] = {"name": "lasgd", "params": {"eval_interval_s": 1.0, **params}}
    return tiny


# ------------------------------------------------------------------- the merge rule


def _drive(alpha: float, progress: float, starts: list[Model]) -> tuple[list[Model], Model]:
    """Workers at speeds 3:1:1 run blocks against a SnapshotAverager, out of phase.

    Each block: take the merge, apply it with the worker's own code (``load_merged``),
    add ``progress`` times a random step, snapshot. At the end every worker picks up
    every formed average. Returns the worker models and x0 + the mean of all steps.
    """
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    k = len(starts)
    models = [torch.nn.Linear(3, 2) for _ in range(k)]
    states = [RecordDict() for _ in range(k)]
    averager = SnapshotAverager(range(k), starts[0], alpha)
    steps = {n: np.zeros(3 * 2 + 2) for n in range(k)}

    def block(n: int, step: bool) -> None:
        scale, offset, through = averager.take_merge(n)
        if scale == 0.0:
            offset = starts[n]
        record = ArrayRecord({key: Array(v) for key, v in (offset or {}).items()})
        load_merged(models[n], states[n], scale, record)
        if step:
            delta = progress * rng.standard_normal(8).astype(np.float32)
            steps[n] += delta
            with torch.no_grad():
                models[n].weight += torch.from_numpy(delta[:6].reshape(2, 3))
                models[n].bias += torch.from_numpy(delta[6:])
            states[n][KEPT_MODEL] = ArrayRecord(models[n].state_dict())
            snapshot = {key: v.numpy() for key, v in states[n][KEPT_MODEL].items()}
            averager.add_snapshot(n, snapshot, through)
        else:
            states[n][KEPT_MODEL] = ArrayRecord(models[n].state_dict())

    for n in rng.choice(k, size=60, p=[0.6, 0.2, 0.2]):
        block(int(n), step=True)
    for n in range(k):
        block(n, step=False)
    assert max(averager.lags) >= 3  # the fast worker merged averages several blocks late
    final = [{key: v.numpy() for key, v in s[KEPT_MODEL].items()} for s in states]
    mean_start = {key: np.mean([s[key] for s in starts], axis=0) for key in starts[0]}
    mean_step = np.mean([steps[n] for n in range(k)], axis=0)
    expected = {
        "weight": mean_start["weight"] + mean_step[:6].reshape(2, 3),
        "bias": mean_start["bias"] + mean_step[6:],
    }
    return final, expected


def _models(k: int, spread: float) -> list[Model]:
    rng = np.random.default_rng(1)
    return [
        {
            "weight": (spread * rng.standard_normal((2, 3))).astype(np.float32),
            "bias": (spread * rng.standard_normal(2)).astype(np.float32),
        }
        for _ in range(k)
    ]


def test_alpha_one_merges_keep_the_workers_mean() -> None:
    """α=1: mean of the worker models = x0 + mean of all local steps, however late merged.

    With a common start the merges of every formed average must cancel in the mean;
    with α=1/2 they do not (each merge halves the worker's unshared progress).
    """
    starts = _models(1, 0.5) * 3
    final, expected = _drive(1.0, 0.1, starts)
    for key in expected:
        mean = np.mean([f[key] for f in final], axis=0)
        np.testing.assert_allclose(mean, expected[key], rtol=0, atol=1e-6)
    final, expected = _drive(0.5, 0.1, starts)
    assert (
        max(np.abs(np.mean([f[k] for f in final], 0) - expected[k]).max() for k in expected) > 1e-3
    )


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_eta_zero_workers_agree_after_one_averaging_and_stay(alpha: float) -> None:
    """No local progress, workers starting apart: the first merge makes every worker the
    mean of the first snapshots, and later averages (merged out of phase) keep it so."""
    starts = _models(3, 1.0)
    final, expected = _drive(alpha, 0.0, starts)
    for f in final:
        for key in expected:
            np.testing.assert_allclose(f[key], expected[key], rtol=0, atol=1e-6)


# -------------------------------------------------------------------- whole runs


def test_eta_zero_run_every_worker_is_the_snapshot_average(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """lr=0, workers started from different models, asynchronous: after the run every
    worker's kept model is the mean of the starts (its first snapshots' average)."""
    _lasgd(tiny, staleness=3)
    tiny["client"]["optimizer"]["lr"] = 0.0
    scenario = fedsim.load_scenario(tiny)
    data = federated_data(scenario.data, scenario.seed)
    shapes = build_model("mlp", {"hidden": [16]}, data.input_shape, 10).state_dict()
    rng = np.random.default_rng(7)
    starts = {
        1000 + n: {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in shapes.items()}
        for n in range(4)
    }
    strategy, grid = _start(tiny, tmp_path, Watcher(starts))
    assert max(strategy.averager.lags) >= 1  # some worker merged an average late
    average = {k: np.mean([s[k] for s in starts.values()], axis=0) for k in shapes}
    for node, ctx in grid.contexts.items():
        kept = ctx.state.array_records[KEPT_MODEL]
        for k, v in kept.items():
            np.testing.assert_allclose(v.numpy(), average[k], rtol=0, atol=1e-6, err_msg=f"{node}")


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_run_consensus_is_x0_plus_the_mean_local_progress(
    tiny: dict[str, Any], tmp_path: Path, alpha: float
) -> None:
    """Asynchronous run, α=1: the consensus (mean worker model the server evaluates) is
    the initial model plus the mean over workers of their local steps (each block's
    snapshot minus its start model, recomputed here); α=1/2 breaks the identity."""
    _lasgd(tiny, staleness=3, alpha=alpha)
    watcher = Watcher()
    strategy, _ = _start(tiny, tmp_path, watcher)
    averager = strategy.averager
    x0 = {k: v.astype(np.float64) for k, v in averager.initial.items()}
    progress = {k: np.zeros_like(v) for k, v in x0.items()}
    for node, worker in averager.workers.items():
        for block in range(1, worker.blocks + 1):
            for k in progress:
                progress[k] += watcher.snapshot[node, block][k] - watcher.start[node, block][k]
    consensus = averager.consensus()
    gap = max(
        np.abs(consensus[k] - (x0[k] + progress[k] / len(averager.workers))).max() for k in x0
    )
    assert max(averager.lags) >= 1
    if alpha == 1.0:
        assert gap < 1e-6
    else:
        assert gap > 1e-3


def test_tau_zero_one_step_is_fedavg(tiny: dict[str, Any], tmp_path: Path) -> None:
    """staleness=0 (τ=0), H=1, heterogeneous speeds: every worker starts every block from
    the model FedAvg (one local step, equal shards) sends in that round."""
    tiny["data"]["num_clients"] = 2  # 1438 training examples: two shards of 719
    tiny["client"]["local_steps"] = 1
    tiny["rounds"] = 3
    tiny["strategy"] = {"name": "fedavg", "params": {"fraction_train": 1.0}}
    fedavg = Watcher()
    (tmp_path / "a").mkdir()
    _start(tiny, tmp_path / "a", fedavg)
    tiny["strategy"] = {"name": "lasgd", "params": {"staleness": 0, "eval_interval_s": 0.5}}
    tiny["rounds"] = 4
    lasgd = Watcher()
    (tmp_path / "b").mkdir()
    _start(tiny, tmp_path / "b", lasgd)
    assert set(fedavg.start) <= set(lasgd.start)  # LASGD ran at least FedAvg's 3 rounds
    for key, model in fedavg.start.items():
        for k, v in model.items():
            np.testing.assert_allclose(lasgd.start[key][k], v, rtol=0, atol=1e-6)
    # Synchronous: each worker's j-th snapshot is FedAvg's client update of round j.
    for key, model in fedavg.snapshot.items():
        for k, v in model.items():
            np.testing.assert_allclose(lasgd.snapshot[key][k], v, rtol=0, atol=1e-6)


def _strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in records]


def test_same_seed_same_metrics(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Asynchronous arrivals with stragglers and injected failures: identical metrics."""
    _lasgd(tiny, staleness=2)
    tiny["system"].update(straggle_prob=0.2, failure_prob=0.1)
    a = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "a")
    b = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "b")
    assert _strip(a.metrics) == _strip(b.metrics)
    assert [r["virtual_time_s"] for r in a.metrics] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert a.summary["failures"] > 0 and a.summary["participants"] >= 2 * 4
    wa, wb = np.load(a.run_dir / "final_arrays.npz"), np.load(b.run_dir / "final_arrays.npz")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa.files)
    tiny["seed"] = 4
    c = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "c")
    assert _strip(c.metrics) != _strip(a.metrics)


@pytest.mark.parametrize(
    "bad", [{"alpha": 1.5}, {"staleness": -1}, {"eval_interval_s": 0.0}, {"tau": 0}]
)
def test_bad_parameters_are_scenario_errors(
    tiny: dict[str, Any], tmp_path: Path, bad: dict[str, Any]
) -> None:
    tiny["strategy"] = {"name": "lasgd", "params": bad}
    with pytest.raises(fedsim.ScenarioError, match=r"strategy\.params"):
        fedsim.run(fedsim.load_scenario(tiny), tmp_path)


def test_needs_a_virtual_clock() -> None:
    class WallClockGrid:  # what LASGD sees on an engine without simulated time
        pass

    with pytest.raises(TypeError, match="virtual clock"):
        LASGD().start(WallClockGrid(), ArrayRecord())  # type: ignore[arg-type]
