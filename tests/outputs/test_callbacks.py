"""Callbacks see every round; the metrics a strategy returns reach metrics.jsonl."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import FedAvg

import fedsim
from fedsim.outputs.callbacks import CALLBACKS, Callback, RunInfo, register_callback
from fedsim.outputs.metrics_log import WALL_CLOCK_FIELDS, read_metrics
from fedsim.strategies import STRATEGIES


@register_callback("test-recorder")
class Recorder(Callback):
    """Keeps what it is told (class-level: the ServerApp builds its own instance)."""

    seen: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, tag: str = "") -> None:
        self.tag = tag

    def on_run_start(self, run: RunInfo) -> None:
        self.seen.append(("start", (self.tag, run.run_dir)))

    def on_round_end(
        self, run: RunInfo, server_round: int, record: dict[str, Any], arrays: ArrayRecord
    ) -> None:
        assert isinstance(arrays, ArrayRecord) and len(arrays) > 0
        self.seen.append(("round", (server_round, record)))

    def on_run_end(self, run: RunInfo, records: Sequence[dict[str, Any]]) -> None:
        self.seen.append(("end", len(records)))


def test_a_callback_named_in_the_scenario_receives_every_round(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    Recorder.seen.clear()
    tiny["output"]["callbacks"] = [{"name": "test-recorder", "params": {"tag": "x"}}]
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "r")
    kinds = [k for k, _ in Recorder.seen]
    assert kinds == ["start", "round", "round", "round", "end"]
    assert Recorder.seen[0][1] == ("x", (tmp_path / "r").resolve())
    # The records it saw are those of metrics.jsonl, in order (round 0 = initial model).
    rounds = [v for k, v in Recorder.seen if k == "round"]
    assert [r for r, _ in rounds] == [0, 1, 2]
    assert [rec for _, rec in rounds] == read_metrics(result.run_dir)
    assert Recorder.seen[-1] == ("end", 3)


def test_callback_objects_from_the_python_api(tiny: dict[str, Any], tmp_path: Path) -> None:
    class Count(Callback):
        rounds: list[int]

        def __init__(self) -> None:
            self.rounds = []

        def on_round_end(self, run: RunInfo, server_round: int, record: Any, arrays: Any) -> None:
            self.rounds.append(server_round)

    count = Count()
    fedsim.run(fedsim.load_scenario(tiny), tmp_path / "r", callbacks=[count])
    assert count.rounds == [0, 1, 2]
    tiny["engine"] = "ray"
    with pytest.raises(ValueError, match="only engine 'inprocess'"):
        fedsim.run(fedsim.load_scenario(tiny), tmp_path / "s", callbacks=[count])


def test_unknown_callback_and_tracker_names_are_scenario_errors(tiny: dict[str, Any]) -> None:
    tiny["output"]["callbacks"] = ["no-such-callback"]
    tiny["output"]["trackers"] = ["csv", "tensorbord"]
    with pytest.raises(fedsim.ScenarioError) as err:
        fedsim.load_scenario(tiny)
    text = str(err.value)
    assert "output.callbacks.0: unknown callback" in text
    assert "output.trackers.1: unknown tracker" in text and "tensorboard" in text
    assert "test-recorder" in CALLBACKS


class ScoringFedAvg(FedAvg):
    """FedAvg that adds its own train metrics, one of them named like a fedsim field."""

    def aggregate_train(
        self, server_round: int, replies: Any
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        extra = MetricRecord({"custom-score": 10.0 * server_round, "eval_accuracy": -1.0})
        if metrics is not None:
            extra.update(metrics)
        return arrays, extra


STRATEGIES.add("test-scoring-fedavg", ScoringFedAvg)


def test_strategy_train_and_federated_eval_metrics_reach_the_log(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """Train metrics land as train/<name>, federated evaluation as fed-eval/<name>.

    The strategy's `eval_accuracy` never replaces the central evaluation's; Flower's
    FedAvg averages the clients' `train-loss` by examples, which is fedsim's own
    `train_loss` (all four clients reply on time here).
    """
    tiny["strategy"] = {
        "name": "test-scoring-fedavg",
        "params": {"fraction_train": 1.0, "fraction_evaluate": 1.0},
    }
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "r")
    records = read_metrics(result.run_dir)
    assert "train/custom-score" not in records[0]  # round 0: no training yet
    for r in records[1:]:
        assert r["train/custom-score"] == 10.0 * r["round"]
        assert r["train/eval_accuracy"] == -1.0
        assert 0 <= r["eval_accuracy"] <= 1  # the central evaluation's, untouched
        assert r["train/train-loss"] == pytest.approx(r["train_loss"])
        assert 0 <= r["fed-eval/eval-accuracy"] <= 1
        assert r["fed-eval/eval-loss"] > 0
    assert result.summary["strategy_metrics"]["train/custom-score"] == 20.0
    assert "fed-eval/eval-accuracy" in result.summary["strategy_metrics"]
    # The clients' own wall-clock seconds are wall-clock fields (determinism ignores them).
    assert "train/duration-s" in records[1] and "train/duration-s" in WALL_CLOCK_FIELDS


def test_under_dp_the_strategy_metrics_hold_no_training_loss(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """client.dp keeps the loss on the device: no train/train-loss in the log either."""
    tiny["client"]["dp"] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    tiny["rounds"] = 1
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "r")
    last = read_metrics(result.run_dir)[-1]
    assert last["train_loss"] is None
    assert not any("loss" in k for k in last if k.startswith(("train/", "fed-eval/")))
    assert last["train/epsilon"] > 0  # the privacy spend, as the record's epsilon has it


def test_callback_and_sweep_import_paths_count_as_code(tiny: dict[str, Any]) -> None:
    """A SuperLink's policy sees them: a scenario naming them is code (fedsim.config.import_paths)."""
    from fedsim.config.import_paths import scenario_imports

    tiny["output"]["callbacks"] = ["mylab.callbacks:Print", {"name": "mylab.cb:Other"}]
    tiny["sweep"] = {"strategy.name": ["fedavg", "mylab.strategies:Mine"]}
    names = {str(n) for n in scenario_imports(fedsim.load_scenario(tiny, imports=False))}
    assert names == {
        "output.callbacks.0=mylab.callbacks:Print",
        "output.callbacks.1.name=mylab.cb:Other",
        "sweep.1.strategy.name=mylab.strategies:Mine",
    }


class Gambler(Callback):
    """Draws from every RNG of the process each round (as a careless tracker might).

    Among them the generator Flower samples nodes with (``node_sampling.SAMPLER``, which
    the docs tell strategies to sample with): a draw from it shifts later samples.
    """

    def on_round_end(self, run: RunInfo, server_round: int, record: Any, arrays: Any) -> None:
        import random

        import numpy as np
        import torch

        from fedsim.server.node_sampling import SAMPLER

        random.random(), np.random.rand(), torch.rand(3), SAMPLER.random()


def test_a_callback_drawing_random_numbers_changes_nothing(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """Flower samples nodes with `SAMPLER`: callbacks run with the RNG states put back."""
    from tests.conftest import strip_wall_clock

    tiny["strategy"]["params"]["fraction_train"] = 0.5  # sampling draws from `SAMPLER`
    plain = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "a")
    gambled = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "b", callbacks=[Gambler()])
    assert strip_wall_clock(plain.metrics) == strip_wall_clock(gambled.metrics)


class _Undeclared(Gambler):
    """Draws as Gambler does but says it draws nothing (Callback.draws_random)."""

    draws_random = False


def test_a_round_skips_keeping_rng_states_when_no_callback_draws(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """fedsim's own callbacks say they draw nothing, so a round keeps no RNG states:
    a callback that draws while saying it does not is not undone (it shifts Flower's
    sampling), and one that says it may draw is (the test above)."""
    from tests.conftest import strip_wall_clock

    tiny["strategy"]["params"]["fraction_train"] = 0.5
    tiny["output"]["plots"] = False
    plain = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "a")
    undeclared = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "b", callbacks=[_Undeclared()])
    assert strip_wall_clock(plain.metrics) != strip_wall_clock(undeclared.metrics)


def test_a_tracker_whose_library_is_missing_names_the_extra(
    tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    tiny["output"]["trackers"] = ["wandb"]
    with pytest.raises(
        fedsim.ScenarioError,
        match=r"output\.trackers\.0: 'wandb' needs the wandb package: pip install 'fedsim\[wandb\]'",
    ):
        fedsim.load_scenario(tiny)


def test_a_callback_named_by_import_path(tiny: dict[str, Any], tmp_path: Path) -> None:
    Recorder.seen.clear()
    tiny["rounds"] = 1
    tiny["output"]["callbacks"] = ["tests.outputs.test_callbacks:Recorder"]
    fedsim.run(fedsim.load_scenario(tiny), tmp_path / "r")
    assert [k for k, _ in Recorder.seen] == ["start", "round", "round", "end"]
    tiny["output"]["callbacks"] = ["tests.outputs.test_callbacks:ScoringFedAvg"]
    with pytest.raises(fedsim.ScenarioError, match=r"not a fedsim\.Callback subclass"):
        fedsim.load_scenario(tiny)
