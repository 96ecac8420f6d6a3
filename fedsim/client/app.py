"""fedsim's ClientApp: ``fedsim.client.app:app``.

It finds its data through ``context.node_config`` (``partition-id``,
``num-partitions``, and optionally ``data-path``: a local ``.npz`` that a deployed device
holds instead of computing its partition) and the experiment through the run config
(``scenario``, or ``scenario-yaml`` in a deployment), so the same app runs in-process,
on Flower's Ray engine and under ``flower-supernode``.

Client contract
---------------
train
    Receives ``arrays`` (the global model) and ``config`` (``server-round``, and
    whatever selects a local step, see :mod:`fedsim.client.steps`). Replies with the
    trained ``arrays`` and ``metrics``: ``num-examples``, ``train-loss``,
    ``train-samples``, ``duration-s`` (and ``epsilon`` under DP-SGD: the node's privacy
    spent so far at ``client.dp.delta``; ``attacker`` while ``system.attackers`` is
    set; ``model-bytes`` under ``client.weights``). ``label-flip`` in the config trains
    on labels ``C - 1 - y``. The step's ``reply`` says which arrays the reply carries
    (AGC's coded gradient, selected by ``agc-p``, replies with that instead of a model)
    and any metrics of its own (a moment-encoded reply's ``moment-block``). The data
    loss is ``client.loss``.
train.lasgd
    An LASGD job (see :mod:`fedsim.algorithms.lasgd.server`): ``lasgd-scale`` a in the
    config and an offset b in ``arrays``; trains from ``a*x + b`` (x: the model kept in
    ``context.state``) with the optimizer state kept there too (SGD momentum), keeps
    both and replies with the model like ``train``.
query.labels
    Replies with ``metrics``: ``labels``, the distinct labels of the node's data.
query.partition
    Replies with ``metrics``: ``partition-id`` from the node config (the server's
    virtual clock knows Flower's nodes by their partitions).
evaluate
    Receives ``arrays``; replies with ``metrics``: ``num-examples``, ``eval-loss``,
    ``eval-accuracy`` on the node's own data (regression targets: ``eval-loss`` is the
    mean squared error, and there is no accuracy).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence

from flwr.app import Context, Message, MetricRecord, RecordDict, UserConfig
from flwr.clientapp import ClientApp

from fedsim import wire
from fedsim.algorithms import shipped_algorithms
from fedsim.algorithms.compression.client import link_mod
from fedsim.client import stacked
from fedsim.client.actions import ACTIONS
from fedsim.client.attacks import attack_mod
from fedsim.client.dp import DP_EVALUATE_REFUSAL
from fedsim.client.failure_mod import failure_mod
from fedsim.client.job import (
    EVALUATE_PURPOSE,
    TRAIN_PURPOSE,
    check_complete,
    resolve_job,
    train_job,
)
from fedsim.client.steps import STEPS  # all shipped
from fedsim.data.node_data import node_data
from fedsim.evaluation import evaluate_model, mean_squared_error
from fedsim.reply_chunk import TrainedTogether
from fedsim.run_config import scenario_from_run_config

# Every shipped algorithm's client half: its local steps and actions register on import
# (a plugin algorithm's come with the scenario's plugins, imported in every process).
for _spec in shipped_algorithms():
    if _spec.client is not None:
        importlib.import_module(_spec.client)


class FedsimClientApp(ClientApp):
    """fedsim's ClientApp, which can also train many nodes' train messages together.

    Messages of a registered client action (:mod:`fedsim.client.actions`) go to its
    handler; actions registered after the app was built (a plugin's) are added on the
    next message.
    """

    def __call__(self, message: Message, context: Context) -> Message:
        """Handle ``message`` (adding any newly registered client actions first)."""
        if len(ACTIONS) != self._actions_added:
            self._add_actions()
        return super().__call__(message, context)

    _actions_added = 0

    def _add_actions(self) -> None:
        for name in ACTIONS.names():
            action = ACTIONS.get(name)
            if name not in self._added:
                add = {"train": self.train, "evaluate": self.evaluate, "query": self.query}
                add[action.category](action.name)(action.handler)
                self._added.add(name)
        self._actions_added = len(ACTIONS)

    @property
    def _added(self) -> set[str]:
        if not hasattr(self, "_added_names"):
            self._added_names: set[str] = set()
        return self._added_names

    def train_together(
        self, jobs: Sequence[tuple[Message, Context]], max_batch: int
    ) -> TrainedTogether:
        """See :func:`fedsim.client.stacked.train_chunks` (None: call the app)."""
        return stacked.train_chunks(jobs, max_batch)

    def prepare(self, run_config: UserConfig) -> None:
        """Load the scenario and its data once per process, before any job is timed.

        (:class:`fedsim.engine.executor.Preparable`: a worker calls it before it says it
        is ready, so ``engine.client_timeout_s`` counts a client's own work only.)
        """
        scenario = scenario_from_run_config(run_config)
        node_data(scenario.data, scenario.seed, 0, None)  # fills the per-process caches


# Outermost first: the failure mod turns what the handler raised into an error reply
# carrying the client's traceback; the link mod decodes what arrived before an attacker sees it and
# codes the reply after the attacker has changed it, as on a real device.
app = FedsimClientApp(mods=[failure_mod, link_mod, attack_mod])
__all__ = ["STEPS", "app"]


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run local training with the step the server asked for."""
    start = time.perf_counter()
    return train_job(resolve_job(msg, context, purpose=TRAIN_PURPOSE), msg, context, start)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on the node's own data."""
    job = resolve_job(msg, context, purpose=EVALUATE_PURPOSE)
    if job.scenario.client.dp is not None:
        raise ValueError(f"client.dp: {DP_EVALUATE_REFUSAL}")  # validation refuses it first
    check_complete(job.missing)
    batch = job.scenario.client.eval_batch_size
    if job.data.y.dtype.kind == "f":  # regression targets: the MSE, no accuracy
        mse = mean_squared_error(job.model, job.data.x, job.data.y, batch)
        metrics = MetricRecord({wire.NUM_EXAMPLES: len(job.data.y), wire.EVAL_LOSS: mse})
        return Message(RecordDict({wire.METRICS: metrics}), reply_to=msg)
    loss, acc = evaluate_model(job.model, job.data.x, job.data.y, batch)
    metrics = MetricRecord(
        {wire.NUM_EXAMPLES: len(job.data.y), wire.EVAL_LOSS: loss, wire.EVAL_ACCURACY: acc}
    )
    return Message(RecordDict({wire.METRICS: metrics}), reply_to=msg)


@app.query(wire.QUERY_PARTITION.split(".", 1)[1])
def partition(msg: Message, context: Context) -> Message:
    """Say which partition this node holds (its ``partition-id``)."""
    partition_id = int(context.node_config[wire.PARTITION_ID])
    metrics = MetricRecord({wire.PARTITION_ID: partition_id})
    return Message(RecordDict({wire.METRICS: metrics}), reply_to=msg)
