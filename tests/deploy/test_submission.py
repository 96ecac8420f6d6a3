"""The deployment engine: what travels in the run config, and how a run's end is read.

A fake ``flwr`` executable stands in for the SuperLink here; the loopback tests run
the real one.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import get_fused_config_from_dir, parse_config_args

import fedsim
from fedsim import wire
from fedsim.config.sources import to_yaml
from fedsim.deploy import flwr_cli
from fedsim.deploy.flwr_cli import SuperLinkConnection
from fedsim.deploy.submission import APP_DIR, DeploymentEngine, deployment_run_config
from fedsim.errors import DeploymentError
from fedsim.run_config import scenario_from_run_config


def test_the_app_declares_every_run_config_key() -> None:
    """Flower refuses override keys the app does not declare."""
    declared = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    keys = {v for k, v in vars(wire).items() if k.startswith("RUN_")}
    assert keys == set(declared["config"])
    components = declared["components"]
    assert components == {
        "serverapp": "fedsim.server.app:app",
        "clientapp": "fedsim.client.app:app",
    }


def test_a_whole_scenario_survives_flowers_run_config(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["output"]["dir"] = 'quotes " and \\ and\nnewlines, ünïcode'
    scenario = fedsim.load_scenario(tiny)
    config = deployment_run_config(scenario, {wire.RUN_DIR: "/runs/x"}, wait_nodes=4)
    path = tmp_path / "run-config.toml"
    path.write_text(flwr_cli.tomli_w.dumps(config))
    # What `flwr run --run-config FILE` parses, fused as the SuperLink does.
    fused = get_fused_config_from_dir(APP_DIR, parse_config_args([str(path)]))
    assert fused[wire.RUN_DIR] == "/runs/x" and fused[wire.RUN_WAIT_NODES] == 4
    assert scenario_from_run_config(fused) == scenario


def test_the_scenario_text_wins_over_a_path(tiny: dict[str, Any], tmp_path: Path) -> None:
    scenario = fedsim.load_scenario(tiny)
    config = {
        wire.RUN_SCENARIO: str(tmp_path / "elsewhere.yaml"),
        wire.RUN_SCENARIO_YAML: to_yaml(scenario),
    }
    assert scenario_from_run_config(config) == scenario


def test_a_broken_scenario_text_names_the_key() -> None:
    with pytest.raises(fedsim.ScenarioError, match=r"scenario-yaml.*rounds"):
        scenario_from_run_config({wire.RUN_SCENARIO_YAML: "name: x\nrounds: -1\n"})
    with pytest.raises(fedsim.ScenarioError, match="neither"):
        scenario_from_run_config({wire.RUN_SCENARIO: "", wire.RUN_SCENARIO_YAML: ""})


def test_connection_config_is_insecure_or_pins_the_ca(tmp_path: Path) -> None:
    insecure = tomllib.loads(SuperLinkConnection("h:1").config_toml())
    assert insecure["superlink"] == {
        "default": "fedsim",
        "fedsim": {"address": "h:1", "insecure": True},
    }
    tls = tomllib.loads(SuperLinkConnection("h:1", tmp_path / "ca.crt").config_toml())
    assert tls["superlink"]["fedsim"]["root-certificates"] == str(tmp_path / "ca.crt")


FAKE_FLWR = '''#!{python}
"""Answers like flwr 1.41 would; `run` plays the ServerApp by writing metrics."""
import json, os, sys, tomllib
from pathlib import Path
args = sys.argv[1:]
state = Path(os.environ["FAKE_STATE"])
if args[0] == "run":
    config = tomllib.loads(Path(args[args.index("--run-config") + 1]).read_text())
    state.write_text(json.dumps(config))
    if os.environ["FAKE_METRICS"] == "1":
        record = {{"round": 1, "eval_accuracy": 0.5, "eval_loss": 1.0, "virtual_time_s": None}}
        Path(config["run-dir"], "metrics.jsonl").write_text(json.dumps(record) + "\\n")
    print("Successfully started run 7")
    print(json.dumps({{"success": True, "run-id": "7"}}))
elif args[0] == "log":
    print("INFO : round 1"); print("INFO : done")
elif args[0] == "ls":
    print(json.dumps({{"success": True, "runs": [{{"run-id": "7", "status": os.environ["FAKE_STATUS"]}}]}}))
'''


@pytest.fixture
def fake_flwr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "flwr"
    exe.write_text(FAKE_FLWR.format(python=sys.executable))
    exe.chmod(0o755)
    real = flwr_cli.flower_env

    def env_with_fake() -> dict[str, str]:
        env = real()
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
        return env

    monkeypatch.setattr(flwr_cli, "flower_env", env_with_fake)
    monkeypatch.setenv("FAKE_STATE", str(tmp_path / "state.json"))
    return tmp_path / "state.json"


def test_a_completed_run_gets_a_summary(
    tiny: dict[str, Any], tmp_path: Path, fake_flwr: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_STATUS", "finished:completed")
    monkeypatch.setenv("FAKE_METRICS", "1")
    lines: list[str] = []
    engine = DeploymentEngine(SuperLinkConnection("127.0.0.1:1"), on_log=lines.append)
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "run", engine=engine)
    assert result.summary["final_eval_accuracy"] == 0.5
    sent = json.loads(fake_flwr.read_text())
    assert sent[wire.RUN_WAIT_NODES] == tiny["data"]["num_clients"]
    assert sent[wire.RUN_DIR] == str((tmp_path / "run").resolve())
    assert lines == ["INFO : round 1", "INFO : done"]
    assert (tmp_path / "run" / "flower.log").read_text() == "INFO : round 1\nINFO : done\n"


@pytest.mark.parametrize(
    ("status", "metrics", "message"),
    [
        ("finished:failed", "1", "ended 'finished:failed'"),  # `flwr log` exits 0 all the same
        ("finished:completed", "0", "SuperLink's host"),  # the ServerApp wrote elsewhere
    ],
)
def test_a_run_that_did_not_complete_is_an_error(
    tiny: dict[str, Any],
    tmp_path: Path,
    fake_flwr: Path,
    monkeypatch: pytest.MonkeyPatch,
    status: str,
    metrics: str,
    message: str,
) -> None:
    monkeypatch.setenv("FAKE_STATUS", status)
    monkeypatch.setenv("FAKE_METRICS", metrics)
    engine = DeploymentEngine(SuperLinkConnection("127.0.0.1:1"))
    with pytest.raises(DeploymentError, match=message):
        fedsim.run(fedsim.load_scenario(tiny), tmp_path / "run", engine=engine)


def test_an_unreachable_superlink_is_one_line(tiny: dict[str, Any], tmp_path: Path) -> None:
    from tests.deploy.loopback import free_port

    engine = DeploymentEngine(SuperLinkConnection(f"127.0.0.1:{free_port()}"))
    with pytest.raises(DeploymentError, match="flwr run"):
        fedsim.run(fedsim.load_scenario(tiny), tmp_path / "run", engine=engine)
