"""A client that fails is loud: its traceback shown once, a run that cannot train stops.

The user's plugin registers a step whose ``data_loss`` has a bug (a ``KeyError``) and a
strategy that asks for it: every client fails every round. ``fedsim run`` must exit 1
after round 1, naming the cause, print the client's traceback exactly once (without
``-v``), and leave the run directory marked ``FAILED``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.failure_watch import INJECTED, FailureWatch, TrainingStopped, kind_of
from tests.conftest import TINY, write_yaml

FEDSIM = [sys.executable, "-c", "from fedsim.cli.main import main; main()"]
BUGGY = '''
import fedsim
from flwr.serverapp.strategy import FedAvg


@fedsim.register_step("buggy")
class Buggy(fedsim.LocalStep):
    """A data loss that looks up a key nobody set."""

    def data_loss(self, logits, targets):
        return {}["temperature"] * logits.sum()


@fedsim.register_strategy("buggy-avg")
class BuggyAvg(FedAvg):
    def configure_train(self, server_round, arrays, config, grid):
        config["local-step"] = "buggy"
        return super().configure_train(server_round, arrays, config, grid)
'''


def test_a_broken_client_step_stops_the_run_with_exit_1_and_one_traceback(
    tmp_path: Path,
) -> None:
    (tmp_path / "buggyplug.py").write_text(BUGGY)
    scenario = {**TINY, "rounds": 3, "system": {}, "strategy": {"name": "buggy-avg"}}
    write_yaml(tmp_path / "s.yaml", {**scenario, "plugins": ["buggyplug"]})
    proc = subprocess.run(
        [*FEDSIM, "run", "-q", "s.yaml", "--out", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert err.count("client traceback") == 0  # the mark is the wire's, not the user's
    assert err.count("Traceback (most recent call last)") == 1, err  # 4 clients, 1 shown
    assert "KeyError: 'temperature'" in err and "in data_loss" in err
    assert "warning: round 1: a client failed: node" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: training stopped: in round 1, 4 of 4 client replies failed")
    assert "KeyError: 'temperature'" in last
    marker = json.loads((tmp_path / "out" / "FAILED").read_text())
    assert marker["error"] == "TrainingStopped"
    rounds = [json.loads(line)["round"] for line in (tmp_path / "out" / "metrics.jsonl").open()]
    assert rounds == [0, 1]  # the failed round is logged, nothing after it


def _reason(node: int, kind: str = "KeyError: 'x'") -> str:
    return f"node {node}: {kind}\nclient traceback:\nTraceback (most recent call last):\n..."


def test_each_kind_is_shown_once_and_the_threshold_counts_rounds_in_a_row() -> None:
    watch = FailureWatch(max_fraction=0.5, max_rounds=2)
    with pytest.warns(UserWarning) as shown:
        watch.after_round(1, participants=3, reasons=[_reason(1), _reason(2)])  # 2/5: fine
        watch.after_round(2, participants=1, reasons=[_reason(3), _reason(4, "OSError: y")])
    assert [str(w.message).split(": a client failed: ")[1][:14] for w in shown] == [
        "node 1: KeyErr",
        "node 4: OSErro",
    ]
    with pytest.raises(TrainingStopped, match=r"rounds 2-3, 2 of 3 client replies failed"):
        watch.after_round(3, participants=1, reasons=[_reason(5), _reason(6)])


def test_injected_faults_and_a_disabled_watch_never_stop_a_run() -> None:
    watch = FailureWatch()
    watch.after_round(1, participants=0, reasons=[f"node 1: InjectedFault: {INJECTED}"])
    with pytest.warns(UserWarning):  # shown, but never a stop
        FailureWatch(max_fraction=None).after_round(1, participants=0, reasons=[_reason(1)])
    assert kind_of(_reason(7)) == kind_of(_reason(8)) == "KeyError: 'x'"
