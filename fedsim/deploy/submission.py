"""Submit one run to a SuperLink with ``flwr run`` and wait for it: the deployment engine.

:class:`DeploymentEngine` satisfies :class:`fedsim.engine.registry.Engine`, so
:func:`fedsim.runner.run` prepares the run directory, calls it and writes the summary
and plots as for a simulation. It ships the resolved scenario's text in the run config
(nodes share no file system with the server), builds the Flower app from
``fedsim/deploy/app`` and talks to the SuperLink through the ``flwr`` CLI in a private
``FLWR_HOME``. ``flwr run --stream`` exits 0 even when the run failed, so the outcome
is read from ``flwr ls --format json``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from flwr.app import UserConfig
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim import wire
from fedsim.deploy.flwr_cli import CONNECTION, SuperLinkConnection, flwr_home, flwr_json
from fedsim.errors import DeploymentError
from fedsim.scenario import Scenario
from fedsim.scenario_loading import to_yaml

APP_DIR = Path(__file__).parent / "app"
COMPLETED = "finished:completed"
FLOWER_LOG = "flower.log"


def deployment_run_config(
    scenario: Scenario, run_config: UserConfig, wait_nodes: int
) -> dict[str, Any]:
    """The run config sent to the SuperLink: the runner's keys plus the scenario's text."""
    config: dict[str, Any] = dict(run_config)
    config[wire.RUN_SCENARIO_YAML] = to_yaml(scenario)
    config[wire.RUN_WAIT_NODES] = wait_nodes
    return config


def failure_reason(log_path: Path) -> str | None:
    """The last fedsim error the ServerApp raised, from the run's Flower log, if any.

    A refused submission (:mod:`fedsim.submission_policy`) or a bad scenario ends the
    run with a traceback there; its last line is the one-line message.
    """
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    found = [
        line.partition(": ")[2].strip()
        for line in lines
        if line.startswith("fedsim.errors.") and ": " in line
    ]
    return found[-1] if found else None


@dataclass
class DeploymentEngine:
    """Run a scenario on a SuperLink's SuperNodes (an :class:`Engine` for the runner).

    Parameters
    ----------
    connection : SuperLinkConnection
        Where the SuperLink is.
    wait_nodes : int, optional
        Nodes the ServerApp waits for before round 1 (default: ``data.num_clients``).
    on_log : callable, optional
        Receives every line of Flower's run log (also written to ``flower.log`` in the
        run directory).
    app_dir : Path
        The Flower app folder to submit.
    """

    connection: SuperLinkConnection
    wait_nodes: int | None = None
    on_log: Callable[[str], None] | None = None
    app_dir: Path = APP_DIR

    def __call__(
        self,
        server_app: ServerApp,
        client_app: ClientApp,
        scenario: Scenario,
        run_config: UserConfig,
    ) -> None:
        """Submit the run, stream its log, and raise unless it completed with metrics."""
        del server_app, client_app  # the app folder names them; they run remotely
        run_dir = Path(str(run_config[wire.RUN_DIR]))
        wait = self.wait_nodes if self.wait_nodes is not None else scenario.data.num_clients
        config = deployment_run_config(scenario, run_config, wait)
        with flwr_home(self.connection) as (home, env):
            overrides = home / "run-config.toml"
            overrides.write_text(tomli_w.dumps(config), encoding="utf-8")
            run_id = self._start(env, overrides)
            self._follow(env, run_id, run_dir / FLOWER_LOG)
            status = self._status(env, run_id)
        if status != COMPLETED:
            reason = failure_reason(run_dir / FLOWER_LOG)
            raise DeploymentError(
                f"run {run_id} on {self.connection.address} ended '{status}'"
                + (f": {reason}" if reason else "")
                + f"; see {run_dir / FLOWER_LOG}"
            )
        if not (run_dir / "metrics.jsonl").exists():
            raise DeploymentError(
                f"run {run_id} completed but {run_dir} holds no metrics.jsonl: the ServerApp "
                "writes the run directory on the SuperLink's host, so run `fedsim deploy run` "
                "there (or on a file system both share)"
            )

    def _start(self, env: dict[str, str], overrides: Path) -> int:
        out = flwr_json(["run", str(self.app_dir), CONNECTION, "--run-config", str(overrides)], env)
        run_id = out.get("run-id")
        if run_id is None:
            raise DeploymentError(
                f"the SuperLink at {self.connection.address} did not start the run: "
                f"{out.get('error-message') or out}"
            )
        return int(run_id)

    def _follow(self, env: dict[str, str], run_id: int, log_path: Path) -> None:
        """Stream the run's log (``flwr log`` returns when the run has finished)."""
        cmd = ["flwr", "log", str(run_id), CONNECTION, "--stream"]
        with (
            log_path.open("w", encoding="utf-8") as log,
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as proc,
        ):
            assert proc.stdout is not None  # stdout=PIPE guarantees it
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if self.on_log is not None:
                    self.on_log(line.rstrip("\n"))

    def _status(self, env: dict[str, str], run_id: int) -> str:
        runs = flwr_json(["ls", CONNECTION, "--run-id", str(run_id)], env).get("runs") or [{}]
        return str(runs[0].get("status", "unknown"))
