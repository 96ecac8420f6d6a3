"""The ``ray`` engine: the same ServerApp and ClientApp on Flower's Ray simulation engine.

Flower 1.41's supported path (``run_simulation`` is deprecated and passes an empty run
config): the one Flower app ``fedsim/deploy/app`` submitted with
:func:`fedsim.deploy.flwr_cli.submit_run` (as a deployment submits it) to a private
simulation-mode SuperLink (:mod:`fedsim.engine.local_superlink`), with the population
size, client resources and Ray settings from the scenario's ``engine`` section as
Flower's federation config.

Each node is one of Flower's simulated SuperNodes (``partition-id``/``num-partitions``
in its node config, as the ClientApp expects); nodes are run by a pool of Ray actors,
each reserving ``engine.client_resources``. With ``engine.ray_address`` the actors
run on an existing Ray cluster instead of a Ray started for the run.

The ServerApp keeps the scenario's virtual clock on Flower's grid
(:class:`fedsim.engine.observed_grid.ObservedGrid`): device timing, stragglers,
dropouts, injected failures and ``system.deadline_s`` give the in-process engine's
stragglers, virtual time and metrics. The ServerApp runs in Flower's process, so this
one follows its ``metrics.jsonl`` (:func:`fedsim.outputs.metrics_log.following`): the
progress bar advances per round.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from flwr.app import UserConfig

from fedsim import wire
from fedsim.config.import_paths import plugin_pythonpath
from fedsim.config.schema import RayEngine, Scenario
from fedsim.deploy.flwr_cli import check_completed, submit_run
from fedsim.engine.local_superlink import local_superlink
from fedsim.errors import Problem, ScenarioError
from fedsim.outputs.metrics_log import following
from fedsim.submission_policy import SubmissionPolicy
from fedsim.training_device import check_devices

LOG_DIR = "flower"  # inside the run directory: superlink.log and the run's log
RUN_LOG = "run.log"


def federation_config(num_nodes: int, engine: RayEngine) -> dict[str, object]:
    """Flower's simulation settings (``flwr run --federation-config``) for a scenario."""
    out: dict[str, object] = {
        "num-supernodes": num_nodes,
        "client-resources-num-cpus": engine.client_resources.num_cpus,
        "client-resources-num-gpus": engine.client_resources.num_gpus,
        "init-args-logging-level": "error",
        "init-args-log-to-driver": False,
    }
    if engine.ray_address is None and engine.num_cpus is not None:
        # Only for a Ray started here: ray.init refuses resources when joining a cluster.
        out["init-args-num-cpus"] = engine.num_cpus
    return out


def ray_environment(engine: RayEngine) -> dict[str, str]:
    """Environment for ``flwr-simulation``'s ``ray.init``: cluster address, memory cap."""
    env = {
        # Ray's default reserves 30% of RAM for its object store; replies are small.
        "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": str(engine.object_store_mb * 1024 * 1024),
    }
    if engine.ray_address is not None:
        env["RAY_ADDRESS"] = engine.ray_address
    return env


def run_ray(scenario: Scenario, run_config: UserConfig) -> None:
    """Run fedsim's app with every node a simulated SuperNode on Flower's Ray backend."""
    if importlib.util.find_spec("ray") is None:
        raise ScenarioError(
            [Problem("engine.name", "engine 'ray' needs Ray: pip install 'fedsim[ray]'")]
        )
    engine = scenario.engine
    if not isinstance(engine, RayEngine):  # the registry maps 'ray' to this function
        raise TypeError(f"run_ray got an engine section for '{engine.name}'")
    if engine.ray_address is None:  # a cluster's devices are its own
        check_devices(engine.device)
    # The actors are Flower's processes: the ClientApp sets their threads from this.
    run_config = {**run_config, wire.RUN_TORCH_THREADS: engine.threads_per_worker}
    logs = Path(str(run_config[wire.RUN_DIR])) / LOG_DIR
    # The private SuperLink's only user is this process: its runs may do everything.
    env = {
        **ray_environment(engine),
        **SubmissionPolicy.everything().environ(),
        "PYTHONPATH": plugin_pythonpath(scenario),
    }
    with (
        tempfile.TemporaryDirectory(prefix="fedsim-flwr-") as tmp,
        local_superlink(Path(tmp) / "home", logs, env) as link,
    ):
        federation = federation_config(scenario.data.num_clients, engine)
        metrics = Path(str(run_config[wire.RUN_DIR])) / "metrics.jsonl"
        with following(metrics):
            run = submit_run(link, run_config, logs / RUN_LOG, federation_config=federation)
            check_completed(link, run, logs / RUN_LOG)
