"""On Ray, a client that kills its actor's process costs one failure (issue #33, item 6),
and a client's float16 replies do not retype the global model (item 2).

Flower 1.41 put the dead actor back into its pool, so every later job it got failed;
fedsim's ServerApp replaces it (:mod:`fedsim.engine.ray_actors`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TINY, write_yaml
from tests.test_plugins import ENV, FEDSIM

PLUGIN = '''
import os
import signal
from pathlib import Path

import fedsim
from flwr.serverapp.strategy import FedAvg

MARKER = Path({marker!r})


@fedsim.register_step("kills-its-process")
class KillsItsProcess(fedsim.LocalStep):
    """Partition 0 SIGKILLs its own process, once (the marker file says it did)."""

    def __init__(self, inputs):
        super().__init__(inputs)
        self.partition_id = inputs.partition_id
        if inputs.partition_id == 0 and not MARKER.exists():
            MARKER.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    def reply(self, model, data, work):
        """Partition 1 replies in float16 (which must not retype the global model)."""
        out = super().reply(model, data, work)
        if self.partition_id == 1:
            half = {{k: v.detach().cpu().numpy().astype("float16") for k, v in out.arrays.items()}}
            out = fedsim.Reply(half, out.work, out.metrics)
        return out


@fedsim.register_strategy("killer-avg")
class KillerAvg(FedAvg):
    def configure_train(self, server_round, arrays, config, grid):
        config["local-step"] = "kills-its-process"
        return super().configure_train(server_round, arrays, config, grid)
'''


def _run_on_ray(
    work: Path, plugin: str, strategy: str, data: dict[str, Any], env: dict[str, str]
) -> list[dict[str, Any]]:
    """Run 3 rounds of ``strategy`` (defined in ``work/<plugin>``) on Ray; its records."""
    scenario = {
        **TINY,
        "rounds": 3,
        "system": {},
        "plugins": [plugin],
        "strategy": {"name": strategy, "params": {"min_available_nodes": 3}},
        "engine": {"name": "ray", "num_cpus": 2, "object_store_mb": 128},
        "data": data,
    }
    write_yaml(work / "s.yaml", scenario)
    done = subprocess.run(
        [FEDSIM, "run", "s.yaml", "--out", "run", "-q"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_client_that_kills_its_actor_costs_one_failure_and_cannot_retype_the_model(
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    (work / "killer").mkdir(parents=True)
    marker = tmp_path / "killed"
    (work / "killer" / "__init__.py").write_text(PLUGIN.format(marker=str(marker)))
    data = {**TINY["data"], "num_clients": 3}
    records = _run_on_ray(work, "killer", "killer-avg", data, ENV)
    assert marker.exists()  # the client did kill its process
    # One failure, in round 1; every client trains in rounds 2 and 3.
    assert [r["failures"] for r in records] == [0, 1, 0, 0]
    assert [r["participants"] for r in records] == [0, 2, 3, 3]
    # Partition 1's float16 replies were widened: the model sent down keeps its size
    # and the final model its type.
    assert len({r["bytes_down"] for r in records[1:]}) == 1
    final = np.load(work / "run" / "final_arrays.npz")
    assert all(final[k].dtype == np.float32 for k in final.files)


OVERSTATING = '''
import os

import fedsim
from flwr.serverapp.strategy import FedAvg

COUNTS, BOASTS = int(os.environ["OVERSTATE_COUNTS"]), int(os.environ["OVERSTATE_SAMPLES"])


@fedsim.register_step("overstates")
class Overstates(fedsim.LocalStep):
    """One partition counts one example more than it holds in round 1; another claims
    1e300 training samples in round 2."""

    def __init__(self, inputs):
        super().__init__(inputs)
        self.partition_id = inputs.partition_id
        self.round = int(inputs.config["server-round"])

    def reply(self, model, data, work):
        out = super().reply(model, data, work)
        metrics = dict(out.metrics)
        if self.partition_id == COUNTS and self.round == 1:
            metrics["num-examples"] = float(len(data.y) + 1)
        if self.partition_id == BOASTS and self.round == 2:
            metrics["train-samples"] = 1e300
        return fedsim.Reply(out.arrays, out.work, metrics)


@fedsim.register_strategy("overstating-avg")
class OverstatingAvg(FedAvg):
    def configure_train(self, server_round, arrays, config, grid):
        config["local-step"] = "overstates"
        return super().configure_train(server_round, arrays, config, grid)
'''


@pytest.mark.slow
def test_on_ray_a_nodes_replies_are_bounded_by_its_own_partition(tmp_path: Path) -> None:
    """Without client.local_steps, train-samples is bounded by the node's partition (which
    the simulation names), and so is num-examples: one more than the smallest partition
    holds is refused although the largest holds more (issue #33, item 3)."""
    from fedsim.compose import load_scenario
    from fedsim.data.federated import federated_data

    work = tmp_path / "work"
    (work / "overstating").mkdir(parents=True)
    (work / "overstating" / "__init__.py").write_text(OVERSTATING)
    data = {**TINY["data"], "num_clients": 3, "partitioner": {"name": "dirichlet", "alpha": 0.5}}
    # The same data section and seed split the data as the run will (no plugin needed).
    concrete = load_scenario({**TINY, "data": data})
    sizes = [len(p) for p in federated_data(concrete.data, concrete.seed).parts]
    smallest, largest = min(range(3), key=sizes.__getitem__), max(range(3), key=sizes.__getitem__)
    assert sizes[smallest] + 1 <= sizes[largest]  # only the node's own bound refuses it
    env = {**ENV, "OVERSTATE_COUNTS": str(smallest), "OVERSTATE_SAMPLES": str(largest)}
    records = _run_on_ray(work, "overstating", "overstating-avg", data, env)
    assert [r["failures"] for r in records] == [0, 1, 1, 0]
    assert [r["participants"] for r in records] == [0, 2, 2, 3]
    # The reasons (in the ServerApp's log) name each node's own bound: its partition's
    # examples, and one epoch over them in batches of 32.
    log = (work / "run" / "flower" / "run.log").read_text()
    small, large = sizes[smallest], sizes[largest]
    assert f"num-examples {small + 1} exceeds the {small} examples it can hold" in log
    assert f"train-samples 1e+300 exceeds the {large + 32} a local job can take" in log
    # Ray has no virtual clock; the train-samples the strategy averages stay honest.
    averaged = [r["train/train-samples"] for r in records[1:]]
    assert all(0 < a <= large + 32 for a in averaged), averaged
