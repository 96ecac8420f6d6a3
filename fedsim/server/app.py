"""fedsim's ServerApp: ``fedsim.server.app:app``.

Reads the scenario from ``run_config["scenario"]`` (a run submitted to a SuperLink
first passes the operator's :class:`~fedsim.submission_policy.SubmissionPolicy`),
builds the strategy with :func:`fedsim.compose.compose` and runs Flower's round loop
(:mod:`fedsim.server.loop`: the hooks of ``Strategy.start`` in its order, resumable
from a checkpoint; strategies that override ``start`` run their own). Each round's
record goes to the run's callbacks: central evaluation on the held-out test set
(:mod:`fedsim.server.evaluation`), the metrics log, checkpoints, trackers, plots. The
steps are :mod:`fedsim.server.session`'s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim import wire
from fedsim.compose import compose
from fedsim.data.federated import federated_data
from fedsim.engine.protocols import ObservedRounds
from fedsim.outputs.callbacks import RunInfo
from fedsim.run_config import scenario_from_run_config
from fedsim.server.loop import uses_flower_loop
from fedsim.server.session import (
    LABEL_NOISE_FILE,
    SHARING_FILE,
    arm_reply_checks,
    finish,
    flower_loop,
    initial_model,
    observed,
    offline_outputs,
    own_loop,
    seed_everything,
)
from fedsim.submission_policy import SubmissionPolicy

__all__ = ["LABEL_NOISE_FILE", "SHARING_FILE", "app", "main", "wait_for_nodes"]

app = ServerApp()
WAIT_NOTICE_S = 5.0  # a wait on nodes longer than this says so (then every 30 s)
logger = logging.getLogger(__name__)


def wait_for_nodes(
    grid: Grid, count: int, poll_s: float = 1.0, notice_s: float = WAIT_NOTICE_S
) -> None:
    """Block until ``count`` nodes are connected (deployed SuperNodes come up one by one).

    A deployment that lets later rounds go on with fewer nodes (a lower
    ``min_available_nodes``) still starts its first round with the whole population.
    A wait longer than ``notice_s`` logs a warning (and again every 30 s), so a run
    waiting for nodes that never come says so.
    """
    started = time.monotonic()
    next_notice = notice_s
    while (connected := len(list(grid.get_node_ids()))) < count:
        waited = time.monotonic() - started
        if waited >= next_notice:
            logger.warning(
                "waiting for nodes: %d of %d connected after %.0f s", connected, count, waited
            )
            next_notice = waited + 30.0
        time.sleep(poll_s)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the scenario's strategy for ``rounds`` rounds (from a checkpoint if resuming)."""
    flower_grid = not isinstance(grid, ObservedRounds)
    if flower_grid:
        # Flower's own grid: the run came through a SuperLink (deployment, or the ray
        # engine's private one), so its config is the submitter's. Check it before the
        # scenario is loaded, which imports what it names.
        SubmissionPolicy.from_environ().check(context.run_config)
    scenario = scenario_from_run_config(context.run_config)
    # Every check of `fedsim validate` (done already when this process ran it).
    composition = compose(scenario)
    run_dir = Path(str(context.run_config.get(wire.RUN_DIR) or "."))
    if flower_grid:  # count and check what passes, and keep the virtual clock on it
        grid = observed(grid, scenario)
    wait_for_nodes(grid, int(context.run_config.get(wire.RUN_WAIT_NODES, 0)))
    run = RunInfo(run_dir, scenario, resumed=bool(context.run_config.get(wire.RUN_RESUME, False)))
    seed_everything(scenario.seed)
    data = federated_data(scenario.data, scenario.seed)
    initial = initial_model(scenario, data)
    arm_reply_checks(grid, initial, data, scenario, composition)
    strategy = composition.build_strategy()
    offline_outputs(strategy, scenario, data, run_dir)
    loop = flower_loop if uses_flower_loop(strategy) else own_loop
    recorder, callbacks = loop(strategy, grid, initial, data, run)
    finish(recorder, callbacks, grid, run)
