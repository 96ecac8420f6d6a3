"""The natural partition: exactly the grouping by client id, as flwr-datasets defines it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedsim
from fedsim.config.schema import DataConfig, NaturalPartitioner
from fedsim.data.federated import federated_data
from fedsim.data.natural import chosen_ids, group_by_id
from fedsim.data.partitioners import partition
from fedsim.errors import DataUnavailableError, ScenarioError

RNG = np.random.default_rng(5)
IDS = RNG.integers(0, 37, size=600) * 11  # 37 ids, not 0..36: the mapping must not assume it
LABELS = RNG.integers(0, 10, size=600).astype(np.int64)


def test_each_client_holds_exactly_the_examples_of_its_id() -> None:
    parts = partition(NaturalPartitioner(), LABELS, 37, seed=0, client_ids=IDS)
    unique = np.unique(IDS)
    assert len(parts) == len(unique)
    for uid, part in zip(unique, parts, strict=True):
        assert np.array_equal(part, np.flatnonzero(uid == IDS))  # same set, dataset order


def test_equals_flwr_datasets_natural_id_partitioner() -> None:
    """flwr-datasets is the reference: partition k is the k-th id in sorted order."""
    from datasets import Dataset
    from flwr_datasets.partitioner import NaturalIdPartitioner

    names = np.array([f"writer-{i:03d}" for i in IDS])  # string ids, as LEAF's users are
    reference = NaturalIdPartitioner(partition_by="cid")
    reference.dataset = Dataset.from_dict({"idx": np.arange(len(names)), "cid": names})
    expected = [
        np.asarray(reference.load_partition(k)["idx"]) for k in range(reference.num_partitions)
    ]
    ours = partition(NaturalPartitioner(), LABELS, len(expected), seed=0, client_ids=names)
    assert all(np.array_equal(a, b) for a, b in zip(ours, expected, strict=True))


def test_fewer_clients_take_a_seeded_sample_of_ids() -> None:
    first = chosen_ids(IDS, 10, seed=1)
    assert len(first) == 10 and set(first) <= set(IDS)
    assert np.array_equal(first, chosen_ids(IDS, 10, seed=1))
    assert not np.array_equal(first, chosen_ids(IDS, 10, seed=2))
    parts = group_by_id(IDS, first)
    assert all(
        np.array_equal(p, np.flatnonzero(uid == IDS)) for uid, p in zip(first, parts, strict=True)
    )


def test_more_clients_than_ids_names_the_key() -> None:
    with pytest.raises(ScenarioError, match=r"data\.num_clients: .*37 client ids"):
        partition(NaturalPartitioner(), LABELS, 38, seed=0, client_ids=IDS)


def test_data_without_ids_names_the_partitioner() -> None:
    with pytest.raises(ScenarioError, match=r"data\.partitioner\.name: 'natural' needs"):
        partition(NaturalPartitioner(), LABELS, 3, seed=0)


def _write_npz(path: Path, *, test: bool = True, **extra: Any) -> Path:
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {
        "x": rng.random((300, 1, 8, 8), dtype=np.float32),
        "y": rng.integers(0, 4, 300),
        "client_id": np.array([f"u{k}" for k in rng.integers(0, 6, 300)]),
    }
    if test:
        arrays |= {
            "x_test": rng.random((60, 1, 8, 8), dtype=np.float32),
            "y_test": rng.integers(0, 4, 60),
            "client_id_test": np.array([f"u{k}" for k in rng.integers(0, 6, 60)]),
        }
    arrays |= extra
    np.savez(path, **arrays)
    return path


def _natural_scenario(tiny: dict[str, Any], path: Path) -> dict[str, Any]:
    tiny["data"] = {"dataset": f"npz:{path}", "partitioner": "natural"}
    return tiny


def test_npz_with_client_ids_runs_two_rounds_one_client_per_id(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    path = _write_npz(tmp_path / "natural.npz")
    scenario = fedsim.load_scenario(_natural_scenario(tiny, path))
    assert scenario.data.num_clients == 6  # omitted: one client per id
    data = federated_data(scenario.data, scenario.seed)
    with np.load(path) as f:
        ids, ids_test = f["client_id"], f["client_id_test"]
    for k, uid in enumerate(np.unique(ids)):
        assert np.array_equal(data.parts[k], np.flatnonzero(ids == uid))
        assert data.test_parts is not None
        assert np.array_equal(data.test_parts[k], np.flatnonzero(ids_test == uid))
    result = fedsim.run(scenario, tmp_path / "run")
    assert [r["round"] for r in result.metrics] == [0, 1, 2]
    assert result.metrics[-1]["participants"] == 6


def test_npz_without_test_split_carves_one_that_keeps_the_ids(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "natural.npz", test=False)
    cfg = DataConfig.model_validate(
        {"dataset": f"npz:{path}", "partitioner": "natural", "num_clients": 4}
    )
    data = federated_data(cfg, seed=0)
    assert data.test_parts is not None and len(data.test_parts) == 4
    assert sum(len(p) for p in data.test_parts) < len(data.y_test)  # 2 of 6 ids unsampled


def test_npz_with_ids_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "bad.npz", client_id=np.zeros(299, dtype=np.int64))
    cfg = DataConfig.model_validate({"dataset": f"npz:{path}", "partitioner": "natural"})
    with pytest.raises(DataUnavailableError, match=r"'client_id' has shape \(299,\)"):
        federated_data(cfg, seed=0)


def test_per_client_evaluation_scores_each_clients_own_test_split(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """The last round's rows equal the final model evaluated on each client's test ids."""
    import csv

    import torch

    from fedsim.evaluation import evaluate_model
    from fedsim.models import build_model

    path = _write_npz(tmp_path / "natural.npz")
    tiny = _natural_scenario(tiny, path)
    tiny["output"]["per_client_eval"] = True
    scenario = fedsim.load_scenario(tiny)
    result = fedsim.run(scenario, tmp_path / "run")
    with (result.run_dir / "per_client_eval.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["round"]) == 2]
    data = federated_data(scenario.data, scenario.seed)
    model = build_model("mlp", {"hidden": [16]}, data.input_shape, data.num_classes)
    with np.load(result.run_dir / "final_arrays.npz") as f:
        model.load_state_dict({k: torch.from_numpy(f[k]) for k in f.files})
    assert data.test_parts is not None
    expected = [
        evaluate_model(model, data.x_test[p], data.y_test[p])[1] for p in data.test_parts if len(p)
    ]
    assert [float(r["accuracy"]) for r in rows] == pytest.approx(expected, abs=1e-5)
    last = result.metrics[-1]
    assert last["clients_evaluated"] == len(expected)
    assert last["client_accuracy_worst"] == pytest.approx(min(expected), abs=1e-5)
    assert last["client_accuracy_mean"] == pytest.approx(np.mean(expected), abs=1e-5)
    assert last["client_accuracy_p10"] == pytest.approx(np.percentile(expected, 10), abs=1e-5)


def test_per_client_evaluation_without_client_test_data_names_the_key(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    tiny["output"]["per_client_eval"] = True
    with pytest.raises(ScenarioError, match=r"output\.per_client_eval: needs per-client test"):
        fedsim.run(fedsim.load_scenario(tiny), tmp_path / "run")
