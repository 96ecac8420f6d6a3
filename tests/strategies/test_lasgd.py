"""LASGD on the virtual clock: the merge keeps the workers' mean, blocking with H=1 is
synchronous All-Reduce SGD, η=0 reaches consensus, workers idle only at the in-flight
bound, the All-Reduce takes the ring's time, memory is bounded, same seed same metrics."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message

import fedsim
from fedsim import wire
from fedsim.algorithms.lasgd.client import KEPT_MODEL
from fedsim.algorithms.lasgd.communication import EventLog, PushSumGossip, ring_allreduce_s
from fedsim.algorithms.lasgd.server import LASGD
from fedsim.client.app import app as client_app
from fedsim.compose.strategy import build_strategy
from fedsim.config.sources import to_yaml
from fedsim.data.federated import federated_data
from fedsim.data.node_data import node_data
from fedsim.engine.inprocess_grid import InProcessGrid
from fedsim.engine.inprocess_run import build_grid
from fedsim.models import build_model
from fedsim.outputs.metrics_log import WALL_CLOCK_FIELDS
from fedsim.outputs.own_models import ClientTests, score_own_models
from fedsim.strategies import register_strategy

Model = dict[str, np.ndarray]


def _f64(record: ArrayRecord) -> Model:
    return {k: v.numpy().astype(np.float64) for k, v in record.items()}


class Watcher:
    """Wraps the ClientApp: records each worker's start model and reply model per job.

    The start model is what the worker trains from, ``a*x + b`` from its kept model x.
    ``starts`` (optional) replaces the first job's model per node (workers that begin
    apart).
    """

    def __init__(self, starts: dict[int, Model] | None = None) -> None:
        self.starts = starts or {}
        self.start: dict[tuple[int, int], Model] = {}
        self.snapshot: dict[tuple[int, int], Model] = {}

    def __call__(self, msg: Message, ctx: Context) -> Message:
        node, config = ctx.node_id, msg.content[wire.CONFIG]
        job = int(config[wire.SERVER_ROUND])  # type: ignore[arg-type]
        scale = float(config[wire.LASGD_SCALE])  # type: ignore[arg-type]
        if job == 1 and node in self.starts:
            msg.content[wire.ARRAYS] = ArrayRecord(
                {k: Array(v) for k, v in self.starts[node].items()}
            )
        offset = _f64(msg.content[wire.ARRAYS])
        kept = ctx.state.array_records.get(KEPT_MODEL)
        if scale == 0.0 or kept is None:
            self.start[node, job] = offset
        else:
            self.start[node, job] = _f64(kept)
        reply = client_app(msg, ctx)
        if not reply.has_error():
            self.snapshot[node, job] = _f64(reply.content[wire.ARRAYS])
        return reply


def _start(
    tiny: dict[str, Any], tmp_path: Path, client: Watcher, evaluate_fn: Any = None
) -> tuple[LASGD, InProcessGrid]:
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
    assert isinstance(strategy, LASGD)
    if evaluate_fn is not None:
        evaluate_fn.strategy = strategy
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=tiny["rounds"],
        evaluate_fn=evaluate_fn,
    )
    return strategy, grid


def _lasgd(tiny: dict[str, Any], **params: Any) -> dict[str, Any]:
    """4 workers, one step per job, lognormal speeds plus one 4x slow device."""
    tiny["client"]["local_steps"] = 1
    tiny["system"].update(slow_nodes=1, slow_node_slowdown=4.0, seconds_per_sample=0.004)
    tiny["system"].update(uplink_mbps={"distribution": "lognormal", "median": 2.0, "sigma": 0.5})
    tiny["rounds"] = 3
    tiny["strategy"] = {"name": "lasgd", "params": {"eval_interval_s": 1.0, "period": 3, **params}}
    return tiny


def _sim(strategy: LASGD) -> Any:
    assert strategy.sim is not None
    return strategy.sim


# ------------------------------------------------------------------- the merge rule


@pytest.mark.parametrize("in_flight", [1, 2])
def test_alpha_one_keeps_the_workers_mean(
    tiny: dict[str, Any], tmp_path: Path, in_flight: int
) -> None:
    """α=1: the mean worker model is x0 plus the mean over workers of their local steps
    (each job's reply minus its start model, recomputed here in float64), however late
    each merge lands; α=1/2 breaks the identity (each merge shrinks unshared progress)."""
    for alpha in (1.0, 0.5):
        _lasgd(tiny, alpha=alpha, in_flight=in_flight)
        watcher = Watcher()
        (tmp_path / str(alpha)).mkdir()
        strategy, _ = _start(tiny, tmp_path / str(alpha), watcher)
        sim = _sim(strategy)
        x0 = {k: v.astype(np.float64) for k, v in watcher.start[min(watcher.start)].items()}
        progress = {k: np.zeros_like(v) for k, v in x0.items()}
        for (node, job), snapshot in watcher.snapshot.items():
            if job > sim.workers[node].jobs:
                continue  # still computing when the run stopped (its reply never arrived)
            for k in progress:
                progress[k] += snapshot[k] - watcher.start[node, job][k]
        mean = {k: np.mean([m[k] for m in sim.models.values()], axis=0) for k in x0}
        gap = max(np.abs(mean[k] - x0[k] - progress[k] / len(sim.models)).max() for k in x0)
        assert sim.comm.exchanges >= 3  # several averages, merged mid-computation
        if alpha == 1.0:
            assert gap < 1e-6
        else:
            assert gap > 1e-3


@pytest.mark.parametrize(("alpha", "in_flight"), [(1.0, 1), (0.5, 1), (1.0, 2)])
def test_eta_zero_consensus_after_one_all_reduce(
    tiny: dict[str, Any], tmp_path: Path, alpha: float, in_flight: int
) -> None:
    """lr=0, workers started from different models: every job a worker starts after the
    first All-Reduce completed is from the mean of the starts (its x̄), and stays so."""
    _lasgd(tiny, alpha=alpha, in_flight=in_flight)
    tiny["client"]["optimizer"]["lr"] = 0.0
    scenario = fedsim.load_scenario(tiny)
    data = federated_data(scenario.data, scenario.seed)
    shapes = build_model("mlp", {"hidden": [16]}, data.input_shape, 10).state_dict()
    rng = np.random.default_rng(7)
    starts = {
        1000 + n: {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in shapes.items()}
        for n in range(4)
    }
    watcher = Watcher(starts)
    strategy, grid = _start(tiny, tmp_path, watcher)
    log: EventLog = _sim(strategy).log
    first = min(e.time for e in log.events if e.kind == "complete")
    average = {k: np.mean([s[k] for s in starts.values()], axis=0) for k in shapes}
    checked = 0
    for node in starts:
        for e in log.of(node, "compute"):
            if e.time >= first:
                for k, v in watcher.start[node, e.index].items():
                    np.testing.assert_allclose(v, average[k], rtol=0, atol=1e-6)
                checked += 1
            elif e.index > 1:  # before it: the worker's own start
                for k, v in watcher.start[node, e.index].items():
                    np.testing.assert_allclose(v, starts[node][k], rtol=0, atol=1e-6)
    assert checked >= 4 * 3
    for ctx in grid.contexts.values():
        for k, v in ctx.state.array_records[KEPT_MODEL].items():
            np.testing.assert_allclose(v.numpy(), average[k], rtol=0, atol=1e-6)


def test_blocking_one_step_is_synchronous_all_reduce_sgd(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """in_flight=0, H=1, momentum 0.9, heterogeneous speeds: every worker starts step t
    from the model of synchronous All-Reduce SGD, computed here independently:
    x_{t+1} = x_t - η M_t, M_t = β M_{t-1} + mean_k ∇f_k(x_t) (full-batch gradients,
    so the reference needs no batch order). This also checks that each worker's
    momentum persists across jobs: a fresh optimizer per step would give M_t = mean g."""
    _lasgd(tiny, period=1, in_flight=0)
    tiny["data"]["num_clients"] = 2  # 719 examples each: one full batch per step
    tiny["client"]["batch_size"] = 1000
    tiny["system"]["seconds_per_sample"] = 0.0001
    tiny["client"]["optimizer"].update(lr=0.1, momentum=0.9)
    watcher = Watcher()
    strategy, _ = _start(tiny, tmp_path, watcher)
    scenario = fedsim.load_scenario(tiny)
    nodes = sorted(_sim(strategy).models)
    steps = min(_sim(strategy).workers[n].jobs for n in nodes)
    assert steps >= 5
    model = build_model("mlp", {"hidden": [16]}, (64,), 10)
    x = {k: torch.tensor(v) for k, v in watcher.start[nodes[0], 1].items()}
    shards = [node_data(scenario.data, scenario.seed, k, None) for k in range(2)]
    momentum: dict[str, torch.Tensor] | None = None
    for t in range(1, steps + 1):
        for node in nodes:
            for k, v in watcher.start[node, t].items():
                np.testing.assert_allclose(v, x[k].numpy(), rtol=0, atol=2e-5, err_msg=f"{t}")
        grads = []
        for shard in shards:
            model.load_state_dict({k: v.float() for k, v in x.items()})
            model.zero_grad()
            torch.nn.functional.cross_entropy(
                model(torch.from_numpy(shard.x)), torch.from_numpy(shard.y)
            ).backward()
            grads.append({k: p.grad.double() for k, p in model.named_parameters()})  # type: ignore[union-attr]
        g = {k: (grads[0][k] + grads[1][k]) / 2 for k in x}
        momentum = g if momentum is None else {k: 0.9 * momentum[k] + g[k] for k in x}
        x = {k: x[k] - 0.1 * momentum[k] for k in x}


# --------------------------------------------------------------------- the clock


def _outstanding(log: EventLog, node: int, t: float) -> int:
    launched = sum(1 for e in log.of(node, "launch") if e.time <= t)
    return launched - sum(1 for e in log.of(node, "complete") if e.time <= t)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_workers_idle_only_at_the_in_flight_bound(
    tiny: dict[str, Any], tmp_path: Path, in_flight: int
) -> None:
    """From the event log: a worker's jobs follow each other without a gap, except while
    it has ``in_flight`` exchanges outstanding, and it resumes when one completes."""
    _lasgd(tiny, in_flight=in_flight)
    strategy, _ = _start(tiny, tmp_path, Watcher())
    log: EventLog = _sim(strategy).log
    gaps = 0
    for node in _sim(strategy).models:
        jobs = log.of(node, "compute")
        completions = {e.time for e in log.of(node, "complete")}
        for a, b in itertools.pairwise(jobs):
            assert a.end is not None and b.time >= a.end
            if b.time > a.end:
                gaps += 1
                mid = (a.end + b.time) / 2
                assert _outstanding(log, node, mid) >= in_flight, (node, a.end, b.time)
                assert b.time in completions  # it resumed the moment one completed
    assert gaps > 0  # the fast workers did wait for the slow one
    # Computation overlapped the exchanges: some job ran while one was outstanding.
    overlapped = [
        e
        for node in _sim(strategy).models
        for e in log.of(node, "compute")
        if _outstanding(log, node, e.time) >= 1
    ]
    assert overlapped


def test_all_reduce_takes_the_ring_time(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Average j completes at max(last contribution to it, completion of j-1) plus
    2(n-1)/n * bytes over the slowest ring link plus 2(n-1) latencies."""
    assert ring_allreduce_s(1000, [_Link(8, 80), _Link(4, 2), _Link(1, 16)], 0.5) == pytest.approx(
        4 / 3 * 8000 / 1e6 + 4 * 0.5  # links 0->1: 2, 1->2: 4, 2->0: 1 Mbit/s
    )
    _lasgd(tiny)
    strategy, grid = _start(tiny, tmp_path, Watcher())
    sim = _sim(strategy)
    nodes = sorted(sim.models)
    nbytes = sum(v.nbytes for v in sim.models[nodes[0]].values())
    devices = [grid.devices[n] for n in nodes]
    slowest = min(min(devices[k].uplink_mbps, devices[(k + 1) % 4].downlink_mbps) for k in range(4))
    duration = 2 * 3 / 4 * 8 * nbytes / (slowest * 1e6) + 2 * 3 * grid.clock.cfg.latency_s
    log: EventLog = sim.log
    previous = 0.0
    for j in range(1, sim.comm.exchanges + 1):
        last = max(e.time for n in nodes for e in log.of(n, "launch") if e.index == j)
        done = {e.time for n in nodes for e in log.of(n, "complete") if e.index == j}
        assert len(done) == 1
        assert done.pop() == pytest.approx(max(last, previous) + duration, abs=1e-9)
        previous = max(last, previous) + duration
    assert sim.comm.exchanges >= 3


class _Link:
    def __init__(self, up: float, down: float) -> None:
        self.uplink_mbps, self.downlink_mbps = up, down


@pytest.mark.parametrize("in_flight", [0, 1, 2])
def test_snapshots_held_are_bounded(tiny: dict[str, Any], tmp_path: Path, in_flight: int) -> None:
    """At most in_flight x workers snapshots, whatever the speeds (0 when blocking)."""
    _lasgd(tiny, in_flight=in_flight)
    strategy, _ = _start(tiny, tmp_path, Watcher())
    sim = _sim(strategy)
    assert sim.max_snapshots <= in_flight * 4
    assert sim.max_snapshots > (in_flight - 1) * 4  # the bound is reached, not idle
    assert sim.comm.exchanges >= 2


def test_push_sum_conserves_mass() -> None:
    """Gossip: Σ w_k z_k over workers and pushes in transit never changes."""
    rng = np.random.default_rng(0)
    nodes = [0, 1, 2, 3, 4]
    gossip = PushSumGossip(nodes, 8, [_Link(1, 1)] * 5, 0.1, 1.0, keep_snapshots=True)
    models = {n: {"w": rng.standard_normal(3).astype(np.float32)} for n in nodes}
    mass = sum(m["w"].astype(np.float64) for m in models.values())
    events: list[tuple[float, int]] = []
    for step in range(40):
        node = int(rng.integers(5))
        if step % 3 == 0 and events:
            events.sort()
            gossip.complete(events.pop(0)[1])
        merged = gossip.merge(node, models[node])
        models[node] = merged if merged is not None else models[node]
        events += gossip.launch(node, models[node], float(step))
        total = sum(gossip.weight[n] * models[n]["w"].astype(np.float64) for n in nodes)
        total = total + sum(p.weight * p.model["w"] for p in gossip.in_transit.values())
        total = total + sum(p.weight * p.model["w"] for n in nodes for p in gossip.ready[n])
        np.testing.assert_allclose(total, mass, rtol=0, atol=1e-5)


# -------------------------------------------------------------------- whole runs


def _strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in records]


@pytest.mark.parametrize("communication", ["allreduce", "gossip"])
def test_same_seed_same_metrics(tiny: dict[str, Any], tmp_path: Path, communication: str) -> None:
    """Asynchronous arrivals with stragglers and injected failures: identical metrics."""
    _lasgd(tiny, communication=communication)
    tiny["system"].update(straggle_prob=0.2, failure_prob=0.1)
    a = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "a")
    b = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "b")
    assert _strip(a.metrics) == _strip(b.metrics)
    assert [r["virtual_time_s"] for r in a.metrics] == [0.0, 1.0, 2.0, 3.0]
    assert a.summary["failures"] > 0 and a.summary["participants"] >= 4 * 3
    wa, wb = np.load(a.run_dir / "final_arrays.npz"), np.load(b.run_dir / "final_arrays.npz")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa.files)
    tiny["seed"] = 4
    c = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "c")
    assert _strip(c.metrics) != _strip(a.metrics)


class OwnModelScores:
    """An evaluate_fn that scores, at each evaluation, every worker's model by hand and
    through the strategy's ``own_models()`` (what the ServerApp's recorder reports)."""

    def __init__(self, scenario: Any) -> None:
        self.data = federated_data(scenario.data, scenario.seed)
        self.model = build_model(scenario.model.name, scenario.model.params, (64,), 10)
        self.strategy: LASGD | None = None
        self.rows: list[tuple[float, float, float]] = []  # by hand, reported, mean model

    def accuracy(self, state: dict[str, Any]) -> float:
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        with torch.no_grad():
            predicted = self.model(torch.from_numpy(self.data.x_test)).argmax(1).numpy()
        return float((predicted == self.data.y_test).mean())

    def __call__(self, index: int, arrays: ArrayRecord) -> None:
        assert self.strategy is not None
        workers = _sim(self.strategy).models.values()
        by_hand = float(np.mean([self.accuracy(w) for w in workers]))
        tests = ClientTests([])
        reported = score_own_models(
            self.model, self.strategy, arrays, self.data.x_test, self.data.y_test, tests, 64
        )["gen_accuracy_l1"]
        mean_model = self.accuracy({k: v.numpy() for k, v in arrays.items()})
        self.rows.append((by_hand, reported, mean_model))


def test_each_workers_own_model_is_scored(tiny: dict[str, Any], tmp_path: Path) -> None:
    """``gen_accuracy_l1`` is the mean test accuracy of the workers' own models, by hand;
    it is not the average model's, and a whole run logs it at every evaluation."""
    _lasgd(tiny)
    scores = OwnModelScores(fedsim.load_scenario(tiny))
    _start(tiny, tmp_path, Watcher(), scores)
    assert len(scores.rows) == 4  # time 0 and 3 evaluations
    for by_hand, reported, _ in scores.rows:
        assert reported == pytest.approx(by_hand, abs=1e-12)
    assert scores.rows[0][0] == scores.rows[0][2]  # at time 0 every worker holds the start
    assert any(abs(by_hand - mean) > 1e-9 for by_hand, _, mean in scores.rows[1:])
    run = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "run")
    assert all(0.0 <= r["gen_accuracy_l1"] <= 1.0 for r in run.metrics)


@pytest.mark.parametrize(
    "bad",
    [
        {"alpha": 1.5},
        {"period": 0},
        {"in_flight": -1},
        {"eval_interval_s": 0.0},
        {"communication": "ring"},
        {"staleness": 0},  # the earlier design's knob: no longer a parameter
    ],
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


@register_strategy("test-recording-lasgd")
class RecordingLASGD(LASGD):
    """LASGD that keeps every instance, to read its last run's workers."""

    seen: ClassVar[list[LASGD]] = []

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen.append(self)


def test_lost_replies_are_refused_and_failed_jobs_are_sent_again(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """A dropped reply never arrives (its worker would wait for good): refused, naming the
    key. A failed job ran nothing on the worker, so sending it again keeps every worker
    computing: each one finishes jobs despite 30% failures."""
    _lasgd(tiny)
    tiny["system"]["dropout_prob"] = 0.1
    with pytest.raises(fedsim.ScenarioError, match=r"system\.dropout_prob: must be 0 with lasgd"):
        fedsim.load_scenario(tiny)
    tiny["system"].update(dropout_prob=0.0, failure_prob=0.3)
    RecordingLASGD.seen.clear()
    tiny["strategy"]["name"] = "test-recording-lasgd"
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "r")
    assert result.summary["failures"] > 0
    jobs = [w.jobs for w in _sim(RecordingLASGD.seen[-1]).workers.values()]
    assert len(jobs) == 4 and min(jobs) >= 3, jobs
