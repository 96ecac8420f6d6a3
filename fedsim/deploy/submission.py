"""The deployment engine: one run submitted to a SuperLink's SuperNodes, waited for.

:class:`DeploymentEngine` satisfies :class:`fedsim.engine.registry.Engine`, so
:func:`fedsim.runner.run` prepares the run directory, calls it and writes the summary
and plots as for a simulation. It ships the resolved scenario's text in the run config
(nodes share no file system with the server) and submits ``fedsim/deploy/app`` through
:func:`fedsim.deploy.flwr_cli.submit_run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import UserConfig

from fedsim import wire
from fedsim.apps import APP_DIR
from fedsim.config.schema import Scenario
from fedsim.config.sources import to_yaml
from fedsim.deploy.flwr_cli import SuperLinkConnection, check_completed, submit_run
from fedsim.errors import DeploymentError

__all__ = ["APP_DIR", "FLOWER_LOG", "DeploymentEngine", "deployment_run_config"]

FLOWER_LOG = "flower.log"


def deployment_run_config(
    scenario: Scenario, run_config: UserConfig, wait_nodes: int
) -> dict[str, Any]:
    """The run config sent to the SuperLink: the runner's keys plus the scenario's text."""
    config: dict[str, Any] = dict(run_config)
    config[wire.RUN_SCENARIO_YAML] = to_yaml(scenario)
    config[wire.RUN_WAIT_NODES] = wait_nodes
    return config


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

    def __call__(self, scenario: Scenario, run_config: UserConfig) -> None:
        """Submit the run, stream its log, and raise unless it completed with metrics."""
        run_dir = Path(str(run_config[wire.RUN_DIR]))
        wait = self.wait_nodes if self.wait_nodes is not None else scenario.data.num_clients
        config = deployment_run_config(scenario, run_config, wait)
        log = run_dir / FLOWER_LOG
        run = submit_run(self.connection, config, log, on_log=self.on_log, app_dir=self.app_dir)
        check_completed(self.connection, run, log)
        if not (run_dir / "metrics.jsonl").exists():
            raise DeploymentError(
                f"run {run.run_id} completed but {run_dir} holds no metrics.jsonl: the "
                "ServerApp writes the run directory on the SuperLink's host, so run `fedsim "
                "deploy run` there (or on a file system both share)"
            )
