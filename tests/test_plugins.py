"""A user's module, in a fresh folder outside the repository, adds a strategy and a local
step that fedsim runs: through ``fedsim run --import`` and through the scenario's
``plugins`` key, in-process, on Ray and on a loopback deployment.

The step scales the data loss by ``lab-scale``, which the strategy sends as 0: every
client's training loss is then exactly 0 (and its model does not move), which only
happens if the step the module registered ran where the clients trained.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY, write_yaml

FEDSIM = str(Path(sys.executable).with_name("fedsim"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LAB = '''
import fedsim
from flwr.serverapp.strategy import FedAvg


@fedsim.register_step("lab-scaled")
class Scaled(fedsim.LocalStep):
    """The data loss times the config's lab-scale."""

    reads = frozenset({"lab-scale"})

    def __init__(self, inputs):
        super().__init__(inputs)
        self.scale = float(inputs.config["lab-scale"])

    def data_loss(self, logits, targets):
        return self.scale * super().data_loss(logits, targets)


@fedsim.register_strategy("lab-avg")
class LabAvg(FedAvg):
    """FedAvg asking its clients for the lab-scaled step with scale 0."""

    def configure_train(self, server_round, arrays, config, grid):
        config["local-step"] = "lab-scaled"
        config["lab-scale"] = 0.0
        return super().configure_train(server_round, arrays, config, grid)
'''


def _lab(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A working folder holding the user's package ``labplug`` and a scenario using it."""
    work = tmp_path / "work"
    (work / "labplug").mkdir(parents=True)
    (work / "labplug" / "__init__.py").write_text(LAB, encoding="utf-8")
    scenario = {**TINY, "system": {}, "strategy": {"name": "lab-avg"}}
    scenario["data"] = {**TINY["data"], "num_clients": 3}
    return work, scenario


def _fedsim(work: Path, *args: str, env: dict[str, str] = ENV) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FEDSIM, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )


def _train_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines][1:]  # round 0 trains nothing


def test_a_user_module_runs_in_process_by_import_and_by_key(tmp_path: Path) -> None:
    work, scenario = _lab(tmp_path)
    write_yaml(work / "by_flag.yaml", scenario)
    write_yaml(work / "by_key.yaml", {**scenario, "plugins": ["labplug"]})
    flag = _fedsim(work, "run", "by_flag.yaml", "--import", "labplug", "-q", "--out", "a")
    assert flag.returncode == 0, flag.stderr
    key = _fedsim(work, "run", "by_key.yaml", "-q", "--out", "b")
    assert key.returncode == 0, key.stderr
    assert _train_losses(work / "a") == _train_losses(work / "b") == [0.0, 0.0]


def test_a_plugin_that_cannot_be_imported_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from fedsim.cli.main import app

    work, scenario = _lab(tmp_path)
    monkeypatch.chdir(work)
    write_yaml(work / "s.yaml", scenario)
    result = CliRunner().invoke(app, ["run", "s.yaml", "--import", "labplugg", "-q"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if "plugins.0" in line]
    assert len(lines) == 1 and "cannot import module 'labplugg'" in lines[0]
    assert "importable wherever the scenario runs" in lines[0]


@pytest.mark.slow
def test_a_user_module_runs_on_ray(tmp_path: Path) -> None:
    """The ServerApp and Ray's workers are processes of their own: they import the module
    from the folder the user ran fedsim in."""
    work, scenario = _lab(tmp_path)
    scenario["engine"] = {"name": "ray", "num_cpus": 2, "object_store_mb": 128}
    write_yaml(work / "ray.yaml", scenario)
    done = _fedsim(work, "run", "ray.yaml", "--import", "labplug", "-q", "--out", "r")
    assert done.returncode == 0, done.stderr + done.stdout
    assert _train_losses(work / "r") == [0.0, 0.0]


@pytest.mark.slow
def test_a_user_module_runs_on_a_loopback_deployment(tmp_path: Path) -> None:
    """Every process of the deployment (the SuperLink's ServerApp, each SuperNode's
    ClientApp) imports the plugin the scenario lists, found on its PYTHONPATH as on a
    device where the user installed it; the operator allows submitted imports."""
    from tests.deploy.loopback import cluster, free_port, wait_for_port

    work, scenario = _lab(tmp_path)
    write_yaml(work / "deploy.yaml", {**scenario, "plugins": ["labplug"]})
    path = os.pathsep.join(p for p in (str(work), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with cluster(tmp_path) as c:
        fleet, control = free_port(), free_port()
        cmd = [FEDSIM, "deploy", "superlink", "--port", str(fleet), "--control-port"]
        cmd += [str(control), "--insecure", "--runs-root", str(tmp_path)]
        c.start("superlink", [*cmd, "--allow-submitted", "imports"], env=env)
        for k in range(3):
            cmd = [FEDSIM, "deploy", "node", "--partition-id", str(k), "--num-partitions", "3"]
            cmd += ["--superlink", f"127.0.0.1:{fleet}", "--port", str(free_port()), "--insecure"]
            c.start(f"node-{k}", cmd, env=env)
        wait_for_port(control, timeout_s=60)
        cmd = [FEDSIM, "deploy", "run", str(work / "deploy.yaml"), "--superlink"]
        cmd += [f"127.0.0.1:{control}", "--insecure", "--out", str(work / "d"), "--quiet"]
        c.start("run", cmd, env=env)
        rc = c.procs["run"].wait(timeout=240)
        assert rc == 0, f"{c.log('run')}\n{c.log('superlink')[-3000:]}"
    assert _train_losses(work / "d") == [0.0, 0.0]


def test_engines_pass_on_the_folders_plugins_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedsim.config.plugins import plugin_roots, pythonpath_with

    (tmp_path / "quietpkg").mkdir()
    (tmp_path / "quietpkg" / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "quietpkg" / "sub.py").write_text("", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path / "quietpkg")
    roots = plugin_roots(["quietpkg.sub", "quietpkg", "not_there.at_all"])
    assert roots == [str(tmp_path / "quietpkg"), str(tmp_path)]  # cwd first, then the root
    assert pythonpath_with(roots, f"/x{os.pathsep}{tmp_path}") == os.pathsep.join(
        [str(tmp_path / "quietpkg"), str(tmp_path), "/x"]
    )
