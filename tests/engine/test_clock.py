"""Virtual clock: the timing formula and seeded, order-independent draws."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.config.schema import SystemConfig
from fedsim.engine.clock import Fate, VirtualClock
from fedsim.engine.devices import DeviceProfile, sample_population


def test_round_trip_components() -> None:
    """latency 0.1 s; 1 MB down at 8 Mbit/s = 1 s; 500 samples x 2 ms / speed 2 = 0.5 s."""
    cfg = SystemConfig(latency_s=0.1, seconds_per_sample=0.002, straggle_slowdown=4.0)
    clock = VirtualClock(cfg, seed=0)
    dev = DeviceProfile(speed=2.0, uplink_mbps=4.0, downlink_mbps=8.0)
    assert clock.download_s(dev, 1_000_000) == pytest.approx(0.1 + 1.0)
    assert clock.upload_s(dev, 1_000_000) == pytest.approx(0.1 + 2.0)
    assert clock.compute_s(dev, 500, Fate.OK) == pytest.approx(0.5)
    assert clock.compute_s(dev, 500, Fate.STRAGGLE) == pytest.approx(2.0)


def test_draws_are_seeded_and_order_independent() -> None:
    cfg = SystemConfig(straggle_prob=0.3, dropout_prob=0.2, failure_prob=0.1)
    a, b = VirtualClock(cfg, seed=7), VirtualClock(cfg, seed=7)
    forward = [a.draw(1, n) for n in range(50)]
    backward = [b.draw(1, n) for n in reversed(range(50))][::-1]
    assert forward == backward
    assert forward != [VirtualClock(cfg, seed=8).draw(1, n) for n in range(50)]


def test_draw_frequencies_match_probabilities() -> None:
    cfg = SystemConfig(straggle_prob=0.3, dropout_prob=0.2, failure_prob=0.1)
    clock = VirtualClock(cfg, seed=1)
    fates = [clock.draw(d, n) for d in range(100) for n in range(100)]
    freq = {f: fates.count(f) / len(fates) for f in Fate}
    # Drawn in order dropout, failure, straggle, each on an independent uniform.
    assert freq[Fate.DROPOUT] == pytest.approx(0.2, abs=0.015)
    assert freq[Fate.FAILURE] == pytest.approx(0.8 * 0.1, abs=0.015)
    assert freq[Fate.STRAGGLE] == pytest.approx(0.8 * 0.9 * 0.3, abs=0.015)


def test_population_distributions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = tmp_path / "speeds.csv"
    trace.write_text("speed\n1.0\n0.25\n4.0\n", encoding="utf-8")
    cfg = SystemConfig.model_validate(
        {
            "speed": {"distribution": "trace", "path": str(trace)},
            "uplink_mbps": 5,
            "downlink_mbps": {"distribution": "uniform", "low": 10, "high": 20},
        }
    )
    pop = sample_population(cfg, 7, seed=0)
    assert [d.speed for d in pop] == [1.0, 0.25, 4.0, 1.0, 0.25, 4.0, 1.0]
    assert all(d.uplink_mbps == 5.0 for d in pop)
    assert all(10 <= d.downlink_mbps <= 20 for d in pop)
    logn = SystemConfig.model_validate(
        {"speed": {"distribution": "lognormal", "median": 2.0, "sigma": 0.5}}
    )
    speeds = np.array([d.speed for d in sample_population(logn, 4000, seed=0)])
    assert np.median(speeds) == pytest.approx(2.0, rel=0.05)
    assert np.std(np.log(speeds)) == pytest.approx(0.5, rel=0.05)


def test_slow_nodes_divide_the_drawn_speed() -> None:
    """The same draw, with the first two devices persistently 4x slower."""
    base = {"speed": {"distribution": "lognormal", "sigma": 0.5}}
    plain = sample_population(SystemConfig.model_validate(base), 6, seed=3)
    slow = sample_population(
        SystemConfig.model_validate({**base, "slow_nodes": 2, "slow_node_slowdown": 4.0}), 6, 3
    )
    ratio = [p.speed / s.speed for p, s in zip(plain, slow, strict=True)]
    assert ratio == pytest.approx([4.0, 4.0, 1.0, 1.0, 1.0, 1.0])


def test_a_dispatchs_draw_is_each_nodes_own() -> None:
    """A dispatch's draw gives each node the fate it is drawn alone, whatever the other
    nodes of the dispatch and their order, and that fate is the one recorded runs drew
    (a generator seeded by (seed, dispatch, node), computed here independently)."""
    cfg = SystemConfig(straggle_prob=0.3, dropout_prob=0.2, failure_prob=0.1)
    clock = VirtualClock(cfg, seed=5)
    nodes = np.array([1000, 1007, 1003, 1042, 1001, 1999], dtype=np.int64)
    fates = clock.draw_many(4, nodes)
    assert [Fate(int(f)) for f in fates] == [clock.draw(4, int(n)) for n in nodes]
    order = np.array([3, 0, 5, 1, 4, 2])
    assert np.array_equal(clock.draw_many(4, nodes[order]), fates[order])
    assert np.array_equal(clock.draw_many(4, nodes[:2]), fates[:2])
    assert not np.array_equal(clock.draw_many(5, nodes), fates) or len(set(fates)) == 1
    for node, fate in zip(nodes.tolist(), fates.tolist(), strict=True):
        u = np.random.default_rng([5, 4, node]).random(3)
        first = next((f for f, hit in zip((2, 3, 1), u < [0.2, 0.1, 0.3], strict=True) if hit), 0)
        assert fate == first, node


def test_arrivals_are_the_per_message_sums() -> None:
    """The dispatch's arrivals equal now + download_s + compute_s + upload_s, bit for bit."""
    cfg = SystemConfig(latency_s=0.07, seconds_per_sample=0.0013, straggle_slowdown=3.0)
    clock = VirtualClock(cfg, seed=0)
    devices = [DeviceProfile(1.7, 3.3, 9.1), DeviceProfile(0.4, 1.1, 2.9), DeviceProfile(2, 5, 7)]
    down, samples, up = [123_456, 7_890, 0], [640.0, 96.0, 0.0], [98_765, 4_321, 0]
    fates = [Fate.OK, Fate.STRAGGLE, Fate.OK]
    link = tuple(
        np.array([getattr(d, k) for d in devices])
        for k in ("speed", "downlink_mbps", "uplink_mbps")
    )
    got = clock.arrivals(
        12.5,
        link,  # type: ignore[arg-type]
        np.array(down),
        np.array(samples),
        np.array([f.value for f in fates], dtype=np.int8),
        np.array(up),
        np.array([True, True, False]),
    )
    for i, device in enumerate(devices[:2]):
        t = 12.5 + clock.download_s(device, down[i])
        t += clock.compute_s(device, samples[i], fates[i])
        assert got[i] == t + clock.upload_s(device, up[i])
    assert got[2] == 12.5 + clock.compute_s(devices[2], 0.0, Fate.OK)  # local compute only
