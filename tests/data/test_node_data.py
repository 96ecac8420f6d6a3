"""A node's data: its scenario partition, or the file `fedsim deploy split` wrote for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

import fedsim
from fedsim import wire
from fedsim.client.app import app as client_app
from fedsim.config.sources import to_yaml
from fedsim.data.federated import federated_data
from fedsim.data.node_data import node_data, partition_file, write_partitions
from fedsim.engine.flower_compat import set_task_identity
from fedsim.errors import DataUnavailableError
from fedsim.models import build_model


def test_split_files_hold_exactly_the_partitions(tiny: dict[str, Any], tmp_path: Path) -> None:
    scenario = fedsim.load_scenario(tiny)
    paths = write_partitions(scenario.data, scenario.seed, tmp_path)
    assert paths == [partition_file(tmp_path, k) for k in range(4)]
    data = federated_data(scenario.data, scenario.seed)
    for k, path in enumerate(paths):
        from_file = node_data(scenario.data, scenario.seed, k, str(path))
        x, y = data.client_arrays(k)
        assert np.array_equal(from_file.x, x) and np.array_equal(from_file.y, y)
        assert from_file.num_classes == 10 and from_file.input_shape == (1, 8, 8)


def test_a_file_without_the_class_count_takes_it_from_the_scenario(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    scenario = fedsim.load_scenario(tiny)
    path = tmp_path / "mine.npz"
    np.savez(path, x=np.zeros((5, 1, 8, 8), np.float32), y=np.array([0, 1, 1, 0, 1]))
    assert node_data(scenario.data, scenario.seed, 0, str(path)).num_classes == 10


@pytest.mark.parametrize("content", [None, {"x": np.zeros((2, 3))}])
def test_a_bad_data_path_names_the_node_config_key(
    tiny: dict[str, Any], tmp_path: Path, content: dict[str, Any] | None
) -> None:
    scenario = fedsim.load_scenario(tiny)
    path = tmp_path / "node.npz"
    if content is not None:
        np.savez(path, **content)
    with pytest.raises(DataUnavailableError, match="data-path"):
        node_data(scenario.data, scenario.seed, 0, str(path))


def test_the_client_trains_the_same_from_a_file(tiny: dict[str, Any], tmp_path: Path) -> None:
    """One train message, answered by node 1 from its partition and from its file."""
    scenario = fedsim.load_scenario(tiny)
    write_partitions(scenario.data, scenario.seed, tmp_path)
    set_task_identity(1)
    model = build_model("mlp", {"hidden": [16]}, (1, 8, 8), 10)
    run_config = {wire.RUN_SCENARIO_YAML: to_yaml(scenario)}
    replies = []
    for extra in ({}, {wire.DATA_PATH: str(partition_file(tmp_path, 1))}):
        node = {wire.PARTITION_ID: 1, wire.NUM_PARTITIONS: 4, **extra}
        content = RecordDict(
            {
                wire.ARRAYS: ArrayRecord(model.state_dict()),
                wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 1}),
            }
        )
        reply = client_app(
            Message(content, 1001, "train"), Context(1, 1001, node, RecordDict(), run_config)
        )
        replies.append(reply.content.array_records[wire.ARRAYS])
    assert replies[0].keys() == replies[1].keys()
    assert all(np.array_equal(replies[0][k].numpy(), replies[1][k].numpy()) for k in replies[0])
