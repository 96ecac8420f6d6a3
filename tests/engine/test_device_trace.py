"""Device traces: availability intervals, the trace file, and the clock's log of a run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

import fedsim
from fedsim import wire
from fedsim.config.schema import DeviceTraceConfig, SystemConfig
from fedsim.engine.availability import Availability
from fedsim.engine.clock import ClockEvent, VirtualClock
from fedsim.engine.device_trace import load_trace, match_devices
from fedsim.engine.devices import DeviceProfile, sample_population
from fedsim.engine.flower_compat import set_task_identity
from fedsim.engine.inprocess_grid import NODE_ID_OFFSET, InProcessGrid, node_contexts
from fedsim.errors import ScenarioError

SHIPPED = Path(__file__).parents[2] / "scenarios" / "trace_devices.yaml"


def _on(*intervals: tuple[float, float], period: float | None = None) -> Availability:
    arr = np.asarray(intervals, dtype=np.float64)
    return Availability(arr[:, 0], arr[:, 1], period)


def test_availability_without_period_ends_after_the_last_interval() -> None:
    a = _on((0, 2), (5, 7))
    assert [a.online_at(t) for t in (0, 1.9, 2, 4, 5, 6.9, 7, 100)] == [
        True, True, False, False, True, True, False, False,
    ]  # fmt: skip
    assert a.offline_at(1.0) == 2 and a.offline_at(3.0) == 3.0  # already offline
    assert a.next_online(3.0) == 5 and a.next_online(8.0) == math.inf


def test_availability_with_period_wraps_around() -> None:
    a = _on((0, 2), (8, 10), period=10)
    assert a.online_at(9) and a.online_at(21) and not a.online_at(15)
    assert a.offline_at(9) == 12  # [8, 10) runs on into the next period's [0, 2)
    assert a.next_online(13) == 18 and a.next_online(25) == 28
    assert _on((0, 10), period=10).offline_at(3) == math.inf
    times = np.random.default_rng(0).uniform(0, 50, 500)
    assert list(a.online_mask(times)) == [a.online_at(float(t)) for t in times]


def _write(path: Path, trace: Any) -> Path:
    path.write_text(json.dumps(trace), encoding="utf-8")
    return path


def test_trace_file_sets_speeds_bandwidths_and_availability(tmp_path: Path) -> None:
    """40 ms per sample at the default 2 ms reference is speed 0.05: 10 samples take 0.4 s."""
    path = _write(
        tmp_path / "t.json",
        {"devices": [{"ms_per_sample": 40, "uplink_kbps": 500, "downlink_kbps": 2000}]},
    )
    cfg = SystemConfig(trace=DeviceTraceConfig(path=str(path)))
    (device,) = sample_population(cfg, 1, seed=0)
    assert device.availability is None  # no `online`: always
    assert device.uplink_mbps == 0.5 and device.downlink_mbps == 2.0
    clock = VirtualClock(cfg, 0)
    assert clock.compute_s(device, 10, fate=clock.draw(1, 1)) == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("trace", "message"),
    [
        ({"devices": []}, "non-empty list 'devices'"),
        ({"devices": [{"ms_per_sample": 1, "uplink_kbps": 1}]}, r"devices\[0\]\.downlink_kbps"),
        (
            {
                "devices": [
                    {
                        "ms_per_sample": 1,
                        "uplink_kbps": 1,
                        "downlink_kbps": 1,
                        "online": [[5, 9], [8, 12]],
                    }
                ]
            },
            r"devices\[0\]\.online: intervals must be sorted, disjoint",
        ),
        (
            {
                "period_s": 10,
                "devices": [
                    {"ms_per_sample": 1, "uplink_kbps": 1, "downlink_kbps": 1, "online": [[5, 11]]}
                ],
            },
            r"within \[0, period_s=10",
        ),
    ],
)
def test_malformed_trace_names_the_key_and_the_field(
    tmp_path: Path, trace: Any, message: str
) -> None:
    with pytest.raises(ScenarioError, match=r"system\.trace\.path: .*" + message):
        load_trace(_write(tmp_path / "t.json", trace))


def test_devices_are_matched_by_the_seed_and_used_alike() -> None:
    assert np.array_equal(match_devices(40, 30, 1), match_devices(40, 30, 1))
    assert not np.array_equal(match_devices(40, 30, 1), match_devices(40, 30, 2))
    assert len(set(match_devices(40, 30, 1))) == 30  # enough devices: all distinct
    assert set(np.bincount(match_devices(4, 10, 0))) <= {2, 3}  # fewer: dealt out evenly


def _traced_grid(availability: list[Availability], min_online: int) -> InProcessGrid:
    """Nodes that take 10 s for a 10-sample reply; no latency, instant links."""
    set_task_identity(1)
    contexts = node_contexts(len(availability), {})
    devices = {
        nid: DeviceProfile(1.0, 1e9, 1e9, a) for nid, a in zip(contexts, availability, strict=True)
    }
    cfg = SystemConfig(latency_s=0.0, seconds_per_sample=1.0, trace=DeviceTraceConfig(path="-"))

    def client(msg: Message, ctx: Context) -> Message:
        metrics = MetricRecord({wire.NUM_EXAMPLES: 10, wire.TRAIN_SAMPLES: 10})
        return Message(RecordDict({"arrays": ArrayRecord(), "metrics": metrics}), reply_to=msg)

    return InProcessGrid(client, contexts, devices, VirtualClock(cfg, 0), min_online=min_online)


def _train(grid: InProcessGrid, nodes: list[int]) -> list[Message]:
    content = RecordDict({"config": ConfigRecord({"x": 1})})
    return grid.send_and_receive([Message(content, n, "train") for n in nodes])


def test_offline_nodes_are_not_offered_and_mid_round_loss_is_a_timed_dropout() -> None:
    """A online [0, 100): replies at 10. B online [0, 5): trains, goes offline at 5 before
    its reply (due at 10) is sent. C online [20, 30): offline at the start, not offered.
    At 10 only A is online; with min_online 2 the server waits until C comes on at 20."""
    a, b, c = (NODE_ID_OFFSET + k for k in range(3))
    grid = _traced_grid([_on((0, 100)), _on((0, 5)), _on((20, 30))], min_online=2)
    assert grid.get_node_ids() == [a, b]
    replies = _train(grid, [a, b])
    assert [r.metadata.src_node_id for r in replies] == [a]
    # (the links are fast, not instant: a few bytes add picoseconds, hence approx)
    assert grid.clock.now == pytest.approx(10) and grid.telemetry.current.dropouts == 1
    assert _log(grid) == [(0.0, a, "sent", 1), (0.0, b, "sent", 1), (5.0, b, "dropout", 1),
                          (10.0, a, "reply", 1)]  # fmt: skip
    assert grid.get_node_ids() == [a, c] and grid.clock.now == 20
    assert _log(grid)[-1] == (20.0, -1, "wait", 1)
    _train(grid, [b])  # pushed to an offline node anyway: never delivered
    assert _log(grid)[-1] == (20.0, b, "offline", 2)


def _log(grid: InProcessGrid) -> list[tuple[float, int, str, int]]:
    assert grid.clock.events is not None
    # The log is in the order messages were handled; time order is what the test states.
    events = sorted(grid.clock.events, key=lambda e: e.time_s)
    return [(round(e.time_s, 6), e.node, e.kind, e.dispatch) for e in events]


def test_a_round_everyone_drops_out_of_ends_when_the_last_one_goes() -> None:
    grid = _traced_grid([_on((0, 3)), _on((0, 4))], min_online=1)
    assert _train(grid, grid.get_node_ids()) == []
    assert grid.clock.now == 4.0


def _events(run_dir: Path) -> list[ClockEvent]:
    with (run_dir / "clock_events.csv").open(newline="") as f:
        return [
            ClockEvent(float(r["time_s"]), int(r["node"]), r["kind"], int(r["dispatch"]))
            for r in csv.DictReader(f)
        ]


def test_shipped_trace_scenario_samples_only_online_clients(tmp_path: Path) -> None:
    scenario = fedsim.load_scenario(SHIPPED, ["rounds=6"])
    result = fedsim.run(scenario, tmp_path / "run")
    assert (result.run_dir / "plots" / "availability.png").is_file()
    devices = sample_population(scenario.system, scenario.data.num_clients, scenario.seed)
    avail = {NODE_ID_OFFSET + k: d.availability for k, d in enumerate(devices)}
    events = _events(result.run_dir)
    sent = {(e.node, e.dispatch): e.time_s for e in events if e.kind == "sent"}
    replied = {(e.node, e.dispatch) for e in events if e.kind == "reply"}
    dropouts = [e for e in events if e.kind == "dropout"]
    assert sent and not [e for e in events if e.kind == "offline"]
    for (node, _), t in sent.items():
        a = avail[node]
        assert a is not None and a.online_at(t)  # offline at the round's start: never sampled
    assert dropouts  # this trace and seed lose clients mid-round
    for e in dropouts:
        start = sent[(e.node, e.dispatch)]
        a = avail[e.node]
        assert a is not None and e.time_s == pytest.approx(a.offline_at(start), abs=1e-5)
        assert (e.node, e.dispatch) not in replied
    assert sum(r.get("dropouts", 0) for r in result.metrics) == len(dropouts)


def test_strategy_waiting_for_more_than_min_online_is_refused(tmp_path: Path) -> None:
    # Refused while the scenario is composed (as `fedsim validate` refuses it), before
    # any run directory exists.
    with pytest.raises(ScenarioError, match=r"system\.trace\.min_online: must be at least"):
        fedsim.load_scenario(
            SHIPPED, ["rounds=1", "strategy.params.min_train_nodes=5", "output.plots=false"]
        )
    assert not (tmp_path / "run").exists()


def test_two_rounds_on_a_trace_file_are_deterministic(tiny: dict[str, Any], tmp_path: Path) -> None:
    from fedsim.outputs.metrics_log import WALL_CLOCK_FIELDS

    devices = [
        {"ms_per_sample": 5, "uplink_kbps": 800, "downlink_kbps": 4000, "online": [[0, 40]]},
        {"ms_per_sample": 20, "uplink_kbps": 300, "downlink_kbps": 1000, "online": [[0.3, 9]]},
        {"ms_per_sample": 9, "uplink_kbps": 500, "downlink_kbps": 2000},
    ]
    path = _write(tmp_path / "trace.json", {"period_s": 60, "devices": devices})
    # 4 clients over 3 devices: every device is used, so device 1's clients are offline
    # until 0.3 s, and with min_online 4 the first round waits for them.
    tiny["system"] = {"trace": {"path": str(path), "min_online": 4}}
    runs = [fedsim.run(fedsim.load_scenario(tiny), tmp_path / f"run{i}") for i in range(2)]
    strip = [[{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in run.metrics]
             for run in runs]  # fmt: skip
    assert [r["round"] for r in strip[0]] == [0, 1, 2] and strip[0] == strip[1]
    assert strip[0][0]["virtual_time_s"] == pytest.approx(0.3)
    assert (runs[0].run_dir / "clock_events.csv").read_text() == (
        runs[1].run_dir / "clock_events.csv"
    ).read_text()
