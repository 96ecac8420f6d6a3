"""Loading, overrides, shorthands, variant x seed expansion, YAML round trip."""

from __future__ import annotations

from typing import Any

import pytest

import fedsim
from fedsim.config.expand import expand, run_label
from fedsim.config.schema import DirichletPartitioner, LognormalDist, NpzDataset
from fedsim.config.sources import to_yaml
from fedsim.errors import ScenarioError


def test_defaults_and_shorthands(tiny: dict[str, Any]) -> None:
    tiny["data"]["dataset"] = "npz:some/file.npz"
    tiny["data"]["partitioner"] = "dirichlet"
    tiny["system"]["uplink_mbps"] = 3
    s = fedsim.load_scenario(tiny)
    assert s.data.dataset == NpzDataset(path="some/file.npz")
    assert s.data.partitioner == DirichletPartitioner()
    assert s.system.uplink_mbps.value == 3  # type: ignore[union-attr]
    assert isinstance(s.system.speed, LognormalDist)


def test_set_overrides(tiny: dict[str, Any]) -> None:
    s = fedsim.load_scenario(
        tiny,
        [
            "rounds=7",
            "strategy.params.proximal_mu=0.5",
            "strategy.name=fedprox",
            "data.partitioner.name=dirichlet",
            "data.partitioner.alpha=0.1",
            "seeds=[1, 2]",
        ],
    )
    assert s.rounds == 7 and s.strategy.name == "fedprox"
    assert s.strategy.params["proximal_mu"] == 0.5
    assert s.data.partitioner == DirichletPartitioner(alpha=0.1)
    assert s.seeds == [1, 2]


def test_override_of_shorthand_section(tiny: dict[str, Any]) -> None:
    s = fedsim.load_scenario(tiny, ["data.dataset.name=mnist1d", "data.dataset.num_samples=500"])
    assert s.data.dataset.name == "mnist1d"


def test_expansion_order_and_labels(tiny: dict[str, Any]) -> None:
    tiny["seeds"] = [5, 6]
    tiny["variants"] = {"a": {}, "b": {"rounds": 3}}
    runs = expand(fedsim.load_scenario(tiny))
    assert [(r.variant, r.seed, r.rounds) for r in runs] == [
        ("a", 5, 2),
        ("a", 6, 2),
        ("b", 5, 3),
        ("b", 6, 3),
    ]
    assert [run_label(r) for r in runs] == ["a-seed5", "a-seed6", "b-seed5", "b-seed6"]
    assert all(r.is_expanded for r in runs)


def test_resolved_yaml_round_trips(tiny: dict[str, Any]) -> None:
    tiny["variants"] = {"x": {"client.optimizer.lr": 0.3}}
    (run,) = expand(fedsim.load_scenario(tiny))
    again = fedsim.load_scenario(__import__("yaml").safe_load(to_yaml(run)))
    assert again == run and again.client.optimizer.lr == 0.3


def test_scenarios_are_frozen(tiny: dict[str, Any]) -> None:
    s = fedsim.load_scenario(tiny)
    with pytest.raises(Exception, match="frozen"):
        s.rounds = 3  # type: ignore[misc]


def test_variant_error_names_the_variant(tiny: dict[str, Any]) -> None:
    tiny["variants"] = {"bad": {"model": {"name": "resnet"}}}
    with pytest.raises(ScenarioError) as info:
        fedsim.load_scenario(tiny)
    assert info.value.problems[0].key == "variants.bad.model.name"
