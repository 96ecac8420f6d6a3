"""On Ray, a client that kills its actor's process costs one failure (issue #33, item 6),
and a client's float16 replies do not retype the global model (item 2).

Flower 1.41 put the dead actor back into its pool, so every later job it got failed;
fedsim's ServerApp replaces it (:mod:`fedsim.engine.ray_actors`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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


@pytest.mark.slow
def test_a_client_that_kills_its_actor_costs_one_failure_and_cannot_retype_the_model(
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    (work / "killer").mkdir(parents=True)
    marker = tmp_path / "killed"
    (work / "killer" / "__init__.py").write_text(PLUGIN.format(marker=str(marker)))
    scenario = {
        **TINY,
        "rounds": 3,
        "system": {},
        "plugins": ["killer"],
        "strategy": {"name": "killer-avg", "params": {"min_available_nodes": 3}},
        "engine": {"name": "ray", "num_cpus": 2, "object_store_mb": 128},
    }
    scenario["data"] = {**TINY["data"], "num_clients": 3}
    write_yaml(work / "s.yaml", scenario)
    done = subprocess.run(
        [FEDSIM, "run", "s.yaml", "--out", "run", "-q"],
        cwd=work,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert marker.exists()  # the client did kill its process
    records = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    # One failure, in round 1; every client trains in rounds 2 and 3.
    assert [r["failures"] for r in records] == [0, 1, 0, 0]
    assert [r["participants"] for r in records] == [0, 2, 3, 3]
    # Partition 1's float16 replies were widened: the model sent down keeps its size
    # and the final model its type.
    assert len({r["bytes_down"] for r in records[1:]}) == 1
    final = np.load(work / "run" / "final_arrays.npz")
    assert all(final[k].dtype == np.float32 for k in final.files)
