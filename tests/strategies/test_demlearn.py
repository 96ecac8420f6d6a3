"""DemLearn: FedAvg as a one-level tree, group means and clustering against independent
references, absent agents, and identical metrics across workers and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from scipy.cluster.hierarchy import fcluster
from scipy.cluster.hierarchy import linkage as scipy_linkage

import fedsim
from fedsim.algorithms.demlearn.hierarchy import cluster, generalise, specialise
from fedsim.algorithms.demlearn.server import DemLearn
from tests.conftest import run_killed_in_round, same_final_arrays, strip_wall_clock


def _same_partition(a: list[int], b: list[int]) -> bool:
    """Whether two labelings group the same items together (labels may differ)."""
    pairs = set(zip(a, b, strict=True))
    return len(pairs) == len(set(a)) == len(set(b))


@pytest.mark.parametrize(
    ("method", "metric"), [("ward", "euclidean"), ("average", "cosine"), ("single", "cityblock")]
)
def test_clustering_equals_scipys_on_the_same_vectors(method: str, metric: str) -> None:
    """Each level equals scipy's own flat clustering (``fcluster``, ``maxclust``) of the
    same linkage; the levels nest (a level-2 group is a union of level-1 groups)."""
    vectors = np.random.default_rng(0).normal(size=(9, 5))
    labels = cluster(vectors, [4, 2], method, metric)
    z = scipy_linkage(vectors, method=method, metric=metric)
    for level, count in zip(labels, [4, 2], strict=True):
        assert _same_partition(level, list(fcluster(z, count, criterion="maxclust")))
    assert all(
        len({labels[1][i] for i in np.flatnonzero(np.array(labels[0]) == g)}) == 1
        for g in set(labels[0])
    )


def test_group_means_equal_a_hand_computation() -> None:
    """Agents 0..3 hold models 1, 2, 3, 4 with 1, 1, 2, 4 examples; level 1 groups {0, 1}
    and {2, 3}: G_a = (1·1 + 1·2)/2 = 1.5, G_b = (2·3 + 4·4)/6 = 22/6; the root weighs the
    groups by their examples, (2·1.5 + 6·22/6)/8 = 25/8, the agents' weighted mean."""
    models = [{"w": np.full(2, float(v), np.float32)} for v in (1, 2, 3, 4)]
    tree = generalise(models, [1, 1, 2, 4], [[0, 0, 1, 1]])
    np.testing.assert_allclose(tree.models[0][0]["w"], 1.5)
    np.testing.assert_allclose(tree.models[0][1]["w"], 22 / 6, rtol=1e-6)
    np.testing.assert_allclose(tree.models[1][0]["w"], 25 / 8, rtol=1e-6)
    assert tree.weights[0] == {0: 2.0, 1: 6.0}
    # Top-down for agent 3 with β = 0.25: s_1 = 0.75·G_b + 0.25·root.
    s = specialise(tree, 3, 0.25)
    np.testing.assert_allclose(s["w"], 0.75 * 22 / 6 + 0.25 * 25 / 8, rtol=1e-6)


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [11, 12, 13]


def _reply(msg: Message, value: float, examples: int) -> Message:
    arrays = ArrayRecord({"w": Array(np.full(2, value, np.float32))})
    metrics = MetricRecord(
        {"num-examples": examples, "demlearn-partition": msg.metadata.dst_node_id - 11}
    )
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


def test_an_absent_agent_keeps_its_model_and_the_tree_uses_it() -> None:
    """Round 1: all three reply (models 1, 2, 3). Round 2: only node 11 replies (5); nodes
    12 and 13 keep 2 and 3, and the root averages the latest models: (5 + 2 + 3)/3."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    strategy = DemLearn(groups=[], fraction_train=1.0, min_available_nodes=3)
    x = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    sent = list(strategy.configure_train(1, x, ConfigRecord(), _Grid()))  # type: ignore[arg-type]
    assert dict(sent[0].content.config_records["config"])["local-step"] == "demlearn"
    replies = [_reply(m, float(m.metadata.dst_node_id - 10), 10) for m in sent]
    root, _ = strategy.aggregate_train(1, replies)
    assert root is not None
    np.testing.assert_allclose(root["w"].numpy(), 2.0)
    sent = list(strategy.configure_train(2, root, ConfigRecord(), _Grid()))  # type: ignore[arg-type]
    first = next(m for m in sent if m.metadata.dst_node_id == 11)
    root, _ = strategy.aggregate_train(2, [_reply(first, 5.0, 10)])
    assert root is not None
    np.testing.assert_allclose(strategy.models[12]["w"], 2.0)
    np.testing.assert_allclose(strategy.models[13]["w"], 3.0)
    np.testing.assert_allclose(root["w"].numpy(), 10 / 3, rtol=1e-6)
    assert strategy.own_models().clients.keys() == {0, 1, 2}


def _skewed(tiny: dict[str, Any]) -> dict[str, Any]:
    tiny["rounds"] = 4
    tiny["data"]["num_clients"] = 6
    tiny["data"]["partitioner"] = {"name": "pathological", "classes_per_client": 2}
    tiny["strategy"] = {
        "name": "demlearn",
        "params": {"groups": [3, 2], "recluster_every": 2, "fraction_train": 1.0},
    }
    return tiny


def test_a_one_level_tree_is_fedavg_exactly(tiny: dict[str, Any], tmp_path: Path) -> None:
    """groups: [] and no personalisation: every agent starts from the root, the root is
    the example-weighted mean of this round's replies summed in their order: FedAvg's
    metrics and final model, bit for bit."""
    tiny = _skewed(tiny)
    tiny["rounds"] = 3
    avg = fedsim.run(fedsim.load_scenario(tiny | {"strategy": {"name": "fedavg"}}), tmp_path / "a")
    tiny["strategy"]["params"]["groups"] = []
    dem = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "d")
    keys = ("eval_loss", "eval_accuracy")
    assert [{k: r[k] for k in keys} for r in dem.metrics] == [
        {k: r[k] for k in keys} for r in avg.metrics
    ]
    assert same_final_arrays(avg.run_dir, dem.run_dir)
    last = dem.metrics[-1]
    assert last["gen_accuracy_l1"] == last["eval_accuracy"]  # the root is the global model
    assert 0.0 <= last["spec_accuracy_worst"] <= last["spec_accuracy_mean"] <= 1.0


def test_a_hierarchy_specialises(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Three levels are reported; agents' own models beat the root on their own label mix."""
    tiny = _skewed(tiny)
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "run")
    last = result.metrics[-1]
    assert {"gen_accuracy_l0", "gen_accuracy_l1", "gen_accuracy_l2", "gen_accuracy_l3"} <= set(last)
    assert last["gen_accuracy_l3"] == last["eval_accuracy"]
    assert last["train/demlearn-groups-l1"] == 3 and last["train/demlearn-groups-l2"] == 2
    assert last["spec_accuracy_mean"] > last["spec_global_accuracy_mean"]


@pytest.mark.slow
def test_sampling_and_stragglers_give_the_same_metrics_on_workers_and_resumed(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half the agents per round, deadline stragglers and dropouts: two workers, and a run
    killed in round 3 and resumed from its round-2 checkpoint, log what one process does."""
    tiny = _skewed(tiny)
    tiny["strategy"]["params"].update(fraction_train=0.5, personalized=True, cluster_on="updates")
    tiny["system"].update(straggle_prob=0.3, dropout_prob=0.1, deadline_s=1.0)
    tiny["output"]["checkpoint_every"] = 2
    tiny["rounds"] = 3  # re-clustered in rounds 1 and 3: the resumed run re-clusters
    whole = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "whole")
    workers = fedsim.run(fedsim.load_scenario(tiny | {"engine": {"workers": 2}}), tmp_path / "w")
    assert strip_wall_clock(workers.metrics) == strip_wall_clock(whole.metrics)

    run_killed_in_round(fedsim.load_scenario(tiny), tmp_path / "crashed", 3, monkeypatch)
    resumed = fedsim.resume(tmp_path / "crashed")
    assert strip_wall_clock(resumed.metrics) == strip_wall_clock(whole.metrics)
    assert same_final_arrays(resumed.run_dir, whole.run_dir)
    # Some agent missed a round, so the run did exercise absent agents.
    assert any(r.get("stragglers", 0) or r.get("dropouts", 0) for r in whole.metrics[1:])


def test_dp_and_bad_parameters_are_refused(tiny: dict[str, Any]) -> None:
    tiny["strategy"] = {"name": "demlearn"}
    tiny["client"]["dp"] = {"noise_multiplier": 1.0}
    with pytest.raises(
        fedsim.ScenarioError, match=r"client\.dp: cannot be used with strategy 'demlearn'"
    ):
        fedsim.load_scenario(tiny)
    for bad, match in [
        ({"groups": [2, 4]}, "groups must decrease"),
        ({"linkage": "centroid"}, "linkage must be one of 'single', "),
        ({"linkage": "ward", "metric": "cosine"}, "metric must be 'euclidean'"),
        ({"mixing": 1.5}, r"mixing must be a number in \[0, 1\], got 1.5"),
        ({"cluster_on": "grads"}, "cluster_on must be one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            DemLearn(**bad)
