"""Partitioners: disjoint covers, the skew they promise, determinism in the seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.config.schema import DataConfig
from fedsim.data.partitioners import PARTITIONERS, partition
from fedsim.errors import ScenarioError

LABELS = np.random.default_rng(0).integers(0, 10, size=2000).astype(np.int64)


def _cfg(spec: dict) -> object:  # type: ignore[type-arg]
    return DataConfig.model_validate({"partitioner": spec}).partitioner


SPECS = [
    {"name": "iid"},
    {"name": "dirichlet", "alpha": 0.3, "min_partition_size": 5},
    {"name": "pathological", "classes_per_client": 2},
    {"name": "shards", "shards_per_client": 2},
    {"name": "contiguous"},
    {"name": "one-class"},
]


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_partitions_are_disjoint_nonempty_and_deterministic(spec: dict) -> None:  # type: ignore[type-arg]
    parts = partition(_cfg(spec), LABELS, 20, seed=1)
    assert len(parts) == 20 and all(len(p) > 0 for p in parts)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)  # disjoint
    assert joined.max() < len(LABELS)
    again = partition(_cfg(spec), LABELS, 20, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    if spec["name"] != "contiguous":  # the one partitioner that ignores the seed
        other = partition(_cfg(spec), LABELS, 20, seed=2)
        assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_every_registered_partitioner_is_tested() -> None:
    # `natural` groups by client ids, not labels: tests/data/test_natural.py covers it.
    assert sorted(PARTITIONERS.names()) == sorted([s["name"] for s in SPECS] + ["natural"])


def test_iid_covers_everything_evenly() -> None:
    parts = partition(_cfg({"name": "iid"}), LABELS, 7, seed=0)
    assert sum(len(p) for p in parts) == len(LABELS)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_pathological_gives_each_client_its_classes() -> None:
    parts = partition(_cfg({"name": "pathological", "classes_per_client": 2}), LABELS, 20, 0)
    assert all(len(np.unique(LABELS[p])) == 2 for p in parts)


def test_one_class_gives_each_client_one_label() -> None:
    parts = partition(_cfg({"name": "one-class"}), LABELS, 20, seed=0)
    assert all(len(np.unique(LABELS[p])) == 1 for p in parts)
    assert sorted({int(LABELS[p][0]) for p in parts}) == list(range(10))
    assert sum(len(p) for p in parts) == len(LABELS)


def test_dirichlet_skews_labels() -> None:
    parts = partition(
        _cfg({"name": "dirichlet", "alpha": 0.1, "min_partition_size": 5}), LABELS, 10, 0
    )
    top_share = [np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(top_share) > 0.4  # iid would give about 0.1-0.15
    assert min(len(p) for p in parts) >= 5


def test_impossible_requests_name_the_key() -> None:
    with pytest.raises(ScenarioError, match=r"data\.num_clients"):
        partition(_cfg({"name": "one-class"}), LABELS, 5, seed=0)
    with pytest.raises(ScenarioError, match=r"data\.partitioner\.classes_per_client"):
        partition(_cfg({"name": "pathological", "classes_per_client": 11}), LABELS, 5, 0)
    with pytest.raises(ScenarioError, match=r"data\.partitioner\.min_partition_size"):
        partition(_cfg({"name": "dirichlet", "min_partition_size": 500}), LABELS, 10, 0)


def test_a_split_that_drops_a_class_warns_every_run_and_fails_strict_validation(
    tmp_path: Path,
) -> None:
    """flwr-datasets' random class assignment drops digit 1 for seed 0 (10 clients x 2
    classes of 10); the default first-deterministic assignment gives client k class k."""
    import warnings

    from typer.testing import CliRunner

    import fedsim
    from fedsim.cli.main import app
    from fedsim.data.federated import federated_data
    from fedsim.data.partitioners import uncovered_classes
    from fedsim.errors import FedsimWarning
    from tests.conftest import TINY, write_yaml

    raw = {
        **TINY,
        "rounds": 1,
        "seed": 0,
        "data": {
            "dataset": "digits",
            "num_clients": 10,
            "partitioner": {
                "name": "pathological",
                "classes_per_client": 2,
                "class_assignment": "random",
            },
        },
    }
    scenario = fedsim.load_scenario(raw)
    data = federated_data(scenario.data, 0)
    assert uncovered_classes(data.y, data.parts) == [1]
    for attempt in range(2):  # each run says it again
        with warnings.catch_warnings(record=True) as caught:
            fedsim.run(scenario, tmp_path / f"run{attempt}")
        assert [str(w.message) for w in caught if w.category is FedsimWarning] == [
            "data.partitioner: classes [1] of the data reach no client ('pathological', "
            "seed 0): the test examples of those classes cannot be learnt"
        ]
    path = write_yaml(tmp_path / "s.yaml", raw)
    assert CliRunner().invoke(app, ["validate", str(path)]).exit_code == 0
    strict = CliRunner().invoke(app, ["validate", "--strict", str(path)])
    assert strict.exit_code == 2 and "data.partitioner: classes [1]" in strict.output
    default = fedsim.load_scenario(
        {**raw, "data": {**raw["data"], "partitioner": {"name": "pathological"}}}
    )
    data = federated_data(default.data, 0)
    assert uncovered_classes(data.y, data.parts) == []
