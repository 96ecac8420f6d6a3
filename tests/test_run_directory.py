"""A run directory belongs to one run: its lock, its pinned scenario, the resume rules,
a log that lost its tail, and checkpoints that cannot run code."""

from __future__ import annotations

import copy
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import fedsim
from fedsim import wire
from fedsim.cli.main import app
from fedsim.errors import RunDirectoryError, ScenarioError
from fedsim.outputs.metrics_log import read_metrics
from fedsim.run_config import scenario_digest, scenario_from_run_config
from fedsim.server.checkpoint import checkpoint_path, load_checkpoint
from tests.conftest import TINY, same_final_arrays, strip_wall_clock, write_yaml

FEDSIM = [sys.executable, "-c", "from fedsim.cli.main import main; main()"]


def _stateful(rounds: int) -> dict[str, Any]:
    """Server moments (FedAdam), client sampling, DP ledgers, stragglers and dropouts."""
    scenario = copy.deepcopy(TINY)
    scenario["rounds"] = rounds
    scenario["strategy"] = {"name": "fedadam", "params": {"fraction_train": 0.5, "eta": 0.05}}
    scenario["client"]["dp"] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    scenario["system"].update(straggle_prob=0.3, dropout_prob=0.1, deadline_s=1.0)
    scenario["output"]["checkpoint_every"] = 2
    return scenario


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """``whole``: 6 rounds uninterrupted; ``short``: the same scenario with 4 rounds,
    finished, its last checkpoint after round 4."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDSIM_CACHE_DIR", str(root / "cache"))
        whole = fedsim.run(fedsim.load_scenario(_stateful(6)), root / "whole").run_dir
        short = fedsim.run(fedsim.load_scenario(_stateful(4)), root / "short").run_dir
        yield {"whole": whole, "short": short}


@pytest.fixture
def short(runs: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the finished 4-round run, for a test to resume or damage."""
    return Path(shutil.copytree(runs["short"], tmp_path / "short"))


def _resume(run_dir: Path, *sets: str) -> Any:
    args = ["run", "-q", "--resume", str(run_dir)]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(app, args)


# ------------------------------------------------------------------------ the lock


@pytest.mark.slow  # three fedsim processes
def test_of_two_runs_started_together_into_one_directory_one_runs_and_one_is_refused(
    tmp_path: Path,
) -> None:
    """Both start at once; the loser exits 2 naming the winner, whose outputs are its own."""
    scenarios = []
    for seed in (3, 4):
        s = copy.deepcopy(TINY)
        s.update(seed=seed, rounds=10)
        scenarios.append(write_yaml(tmp_path / f"seed{seed}.yaml", s))
    out = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            [*FEDSIM, "run", "-q", str(s), "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in scenarios
    ]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err[-2000:]) for p, _, err in results]
    (winner,) = [p for p, _, _ in results if p.returncode == 0]
    (loser_err,) = [err for p, _, err in results if p.returncode == 2]
    # Started together, the loser usually finds the winner's lock held. On a loaded
    # machine its start-up (importing torch) can outlast the winner's whole run: it then
    # finds a finished run, which is refused too. Either way it must not run.
    busy = f"is in use by another run (pid {winner.pid} on " in loser_err
    finished = "already holds a run; choose another --out" in loser_err
    assert busy or finished, loser_err
    assert "Traceback" not in loser_err and len(loser_err.strip().splitlines()) == 1
    seed = 3 if winner is procs[0] else 4
    assert yaml.safe_load((out / "scenario.resolved.yaml").read_text())["seed"] == seed
    records = read_metrics(out)
    assert [r["round"] for r in records] == list(range(11))  # one run's rounds, once each
    reference = fedsim.run(fedsim.load_scenario(scenarios[seed - 3]), tmp_path / "alone")
    assert strip_wall_clock(records) == strip_wall_clock(reference.metrics)


def test_a_held_lock_names_its_holder_and_the_lock_of_a_dead_holder_is_taken_over(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from fedsim.run_lock import RunLock; "
            "RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(600)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        scenario = write_yaml(tmp_path / "s.yaml", tiny)
        result = CliRunner().invoke(app, ["run", "-q", str(scenario), "--out", str(out)])
        assert result.exit_code == 2
        assert f"in use by another run (pid {holder.pid} on " in result.output
        assert not (out / "metrics.jsonl").exists()
        write_yaml(out / "scenario.resolved.yaml", tiny)
        with pytest.raises(RunDirectoryError, match=f"pid {holder.pid}"):
            fedsim.resume(out)  # resuming takes the lock too
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock, the file stays
        holder.wait()
    assert (out / "run.lock").exists()
    result = CliRunner().invoke(app, ["run", "-q", str(scenario), "--out", str(out)])
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------- the pinned scenario


def test_the_apps_read_the_scenario_only_with_the_digest_the_run_pinned(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rewriting scenario.resolved.yaml during a run (by hand, or by a second run) never
    switches the run's apps to the other scenario: a process that has read it keeps the
    pinned one, a process that has not is refused."""
    from fedsim import run_config

    path = write_yaml(tmp_path / "scenario.resolved.yaml", tiny)
    digest = scenario_digest(path.read_bytes())
    config = {wire.RUN_SCENARIO: str(path), wire.RUN_SCENARIO_SHA256: digest}
    assert scenario_from_run_config(config).seed == 3
    write_yaml(path, {**tiny, "seed": 99, "name": "other"})
    os.utime(path, (1, 1))  # a new modification time did reload it before
    assert scenario_from_run_config(config).seed == 3
    monkeypatch.setattr(run_config, "_cache", {})  # a process that starts now
    with pytest.raises(ScenarioError, match="changed since the run started"):
        scenario_from_run_config(config)


# ------------------------------------------------------------------ resume rules


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("data.num_clients=5", "data.num_clients"),
        ("strategy.name=fedyogi", "strategy.name"),
        ("seed=4", "seed"),
        ("client.optimizer.lr=0.2", "client.optimizer.lr"),
        ("strategy.params.eta=0.1", "strategy.params.eta"),
        ("rounds=3", "rounds"),  # fewer than the 4 the checkpoint has run
    ],
)
def test_resume_refuses_a_changed_scenario_naming_the_key(
    short: Path, change: str, key: str
) -> None:
    before = (short / "metrics.jsonl").read_bytes(), (short / "final_arrays.npz").read_bytes()
    result = _resume(short, change)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"{key}: " in lines[0], result.output
    assert "Traceback" not in result.output
    after = (short / "metrics.jsonl").read_bytes(), (short / "final_arrays.npz").read_bytes()
    assert after == before


def test_resume_refuses_a_hand_edited_resolved_scenario(short: Path) -> None:
    path = short / "scenario.resolved.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["seed"] = 11
    raw["data"]["num_clients"] = 6
    write_yaml(path, raw)
    with pytest.raises(ScenarioError) as info:
        fedsim.resume(short)
    assert [p.key for p in info.value.problems] == ["data.num_clients", "seed"]
    assert "changed since the checkpoint (3 -> 11)" in str(info.value)


def test_resume_of_a_finished_run_says_so_and_reruns_nothing(short: Path) -> None:
    before = (short / "metrics.jsonl").read_bytes()
    result = _resume(short)
    assert result.exit_code == 2
    assert "holds a finished run (all 4 rounds); nothing to resume" in result.output
    assert (short / "metrics.jsonl").read_bytes() == before


def test_resume_with_more_rounds_ends_like_the_longer_uninterrupted_run(
    short: Path, runs: dict[str, Path]
) -> None:
    result = _resume(short, "rounds=6")
    assert result.exit_code == 0, result.output
    assert strip_wall_clock(read_metrics(short)) == strip_wall_clock(read_metrics(runs["whole"]))
    assert same_final_arrays(short, runs["whole"])
    assert yaml.safe_load((short / "scenario.resolved.yaml").read_text())["rounds"] == 6
    assert load_checkpoint(short).server_round == 6


# ------------------------------------------------------------- a truncated log


def test_resume_after_a_truncated_log_cuts_it_back_and_ends_like_an_uninterrupted_run(
    short: Path, runs: dict[str, Path]
) -> None:
    """The log lost the second half of round 4's record (the checkpoint's last round):
    it is cut back to round 3, round 4 comes back from the checkpoint, 5 and 6 run."""
    log = short / "metrics.jsonl"
    data = log.read_bytes()
    log.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 40])
    result = _resume(short, "rounds=6")
    assert result.exit_code == 0, result.output
    assert b"\x00" not in log.read_bytes()
    assert strip_wall_clock(read_metrics(short)) == strip_wall_clock(read_metrics(runs["whole"]))
    assert same_final_arrays(short, runs["whole"])


def test_a_log_that_lost_more_than_the_checkpoint_holds_is_a_one_line_error(short: Path) -> None:
    """The checkpoint after round 4 holds rounds 3 and 4 (those since the round-2
    checkpoint); a log cut inside round 1's record cannot be rebuilt, and is not padded."""
    log = short / "metrics.jsonl"
    data = log.read_bytes()
    second_newline = data.index(b"\n", data.index(b"\n") + 1)
    log.write_bytes(data[: second_newline - 5])
    result = _resume(short, "rounds=6")
    assert result.exit_code == 2
    assert "holds complete records of rounds 0..0 only" in result.output
    assert log.read_bytes() == data[: second_newline - 5]


# ------------------------------------------------------- checkpoints run no code


class _Payload:
    """Unpickling this creates the file ``path`` (what a crafted checkpoint would do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_a_crafted_pickle_checkpoint_never_runs(short: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    checkpoint_path(short).unlink()
    (checkpoint_path(short).parent / "checkpoint.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    result = _resume(short)
    assert result.exit_code == 2
    assert "pickle" in result.output and "Traceback" not in result.output
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["object-array", "pickled-state", "garbage"])
def test_a_crafted_checkpoint_npz_never_runs(short: Path, tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    path = checkpoint_path(short)
    if kind == "garbage":
        path.write_bytes(pickle.dumps(_Payload(marker)))  # a pickle under the .npz name
    else:
        with zipfile.ZipFile(path) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                if name == "a0.npy":  # the first array becomes an object array
                    payload = np.array([_Payload(marker)], dtype=object)
                    with archive.open(name, "w") as member:
                        np.lib.format.write_array(member, payload, allow_pickle=True)
                elif name == "state.json" and kind == "pickled-state":
                    archive.writestr(name, pickle.dumps(_Payload(marker)))
                else:
                    archive.writestr(name, data)
    with pytest.raises(RunDirectoryError, match="not a fedsim checkpoint"):
        load_checkpoint(short)
    result = _resume(short)
    assert result.exit_code == 2 and "not a fedsim checkpoint" in result.output
    assert not marker.exists()
