"""The ``ray`` engine: the same ServerApp and ClientApp on Flower's Ray simulation engine.

Flower 1.41's supported path (``run_simulation`` is deprecated and passes an empty run
config): a Flower App whose ``pyproject.toml`` names the two apps and carries the run
config, ``flwr run`` against a private simulation-mode SuperLink
(:mod:`fedsim.engine.local_superlink`), and the population size, client resources and
Ray settings from the scenario's ``engine`` section as Flower's federation config.

Each node is one of Flower's simulated SuperNodes (``partition-id``/``num-partitions``
in its node config, as the ClientApp expects); nodes are run by a pool of Ray actors,
each reserving ``engine.client_resources``. With ``engine.ray_address`` the actors
run on an existing Ray cluster instead of a Ray started for the run.

This engine has no virtual clock (``system`` timing, stragglers and dropouts are the
in-process engine's): every reply reaches the strategy.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import tomli_w
from flwr.app import UserConfig
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim import wire
from fedsim.engine.local_superlink import EngineRunError, flwr_run, local_superlink
from fedsim.errors import Problem, ScenarioError
from fedsim.scenario import RayEngine, Scenario
from fedsim.submission_policy import SubmissionPolicy
from fedsim.training_device import check_devices

LOG_DIR = "flower"  # inside the run directory: superlink.log, flwr_run.log


def import_spec(obj: object) -> str:
    """``module:attribute`` under which ``obj`` can be imported (Flower loads apps by it).

    Among the modules holding ``obj`` (the defining one and any that imported it), the
    shallowest importable one wins, so ``fedsim.server:app`` beats a test module's alias.
    """
    candidates = [
        (name.split(".")[0] in ("__main__", "__mp_main__", "tests"), name.count("."), name, attr)
        for name, module in list(sys.modules.items())
        for attr, value in list(getattr(module, "__dict__", {}).items())
        if value is obj
    ]
    if not candidates:
        raise EngineRunError("the ray engine needs apps importable as 'module:attribute'")
    _, _, name, attr = min(candidates)
    return f"{name}:{attr}"


def write_app(app_dir: Path, server: str, client: str, run_config: UserConfig) -> Path:
    """Write the Flower App (a ``pyproject.toml`` only; the code is the installed fedsim)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    # tomli_w (as `fedsim deploy` uses) escapes any string, newlines included.
    config = tomli_w.dumps(dict(run_config))
    (app_dir / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedsim-run"
version = "1.0.0"
description = "A fedsim run on Flower's simulation engine"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedsim"

[tool.flwr.app.components]
serverapp = "{server}"
clientapp = "{client}"

[tool.flwr.app.config]
{config}""",
        encoding="utf-8",
    )
    return app_dir


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


def run_ray(
    server_app: ServerApp, client_app: ClientApp, scenario: Scenario, run_config: UserConfig
) -> None:
    """Run the apps with every node a simulated SuperNode on Flower's Ray backend."""
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
    run_dir = Path(str(run_config[wire.RUN_DIR]))
    logs = run_dir / LOG_DIR
    with tempfile.TemporaryDirectory(prefix="fedsim-flwr-") as tmp:
        app_dir = write_app(
            Path(tmp) / "app", import_spec(server_app), import_spec(client_app), run_config
        )
        # The private SuperLink's only user is this process: its runs may do everything.
        env = {**ray_environment(engine), **SubmissionPolicy.everything().environ()}
        with local_superlink(Path(tmp) / "home", logs, env) as link:
            flwr_run(
                link,
                app_dir,
                federation_config(scenario.data.num_clients, engine),
                logs / "flwr_run.log",
            )
