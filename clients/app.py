"""fedsim's ClientApp: ``fedsim.clients.app:app``.

It finds its data through ``context.node_config`` (``partition-id``,
``num-partitions``, and optionally ``data-path``: a local ``.npz`` that a deployed device
holds instead of computing its partition) and the experiment through the run config
(``scenario``, or ``scenario-yaml`` in a deployment), so the same app runs in-process,
on Flower's Ray engine and under ``flower-supernode``.

Client contract
---------------
train
    Receives ``arrays`` (the global model) and ``config`` (``server-round``, and
    whatever selects a local step, see :mod:`fedsim.clients.steps`). Replies with the
    trained ``arrays`` and ``metrics``: ``num-examples``, ``train-loss``,
    ``train-samples``, ``duration-s`` (and ``epsilon`` under DP-SGD: the node's privacy
    spent so far at ``client.dp.delta``).
evaluate
    Receives ``arrays``; replies with ``metrics``: ``num-examples``, ``eval-loss``,
    ``eval-accuracy`` on the node's own data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from numpy.typing import NDArray
from torch import nn

from fedsim import wire
from fedsim.clients import curvature  # noqa: F401  (registers the curvature step)
from fedsim.clients.dp import PrivateGradient, spend
from fedsim.clients.steps import StepInputs, select_step
from fedsim.clients.training import Gradient, plain_gradient, train_local
from fedsim.data.node_data import node_data
from fedsim.evaluation import evaluate_model
from fedsim.models import build_model
from fedsim.run_config import scenario_from_run_config
from fedsim.scenario import Scenario

app = ClientApp()


@dataclass
class _Job:
    scenario: Scenario
    partition_id: int
    x: NDArray[Any]
    y: NDArray[np.int64]
    model: nn.Module
    server_round: int
    extras: dict[str, np.ndarray]


def _job(msg: Message, context: Context, purpose: int) -> _Job:
    """Resolve scenario, data partition and received model; seed this job's RNG."""
    scenario = scenario_from_run_config(context.run_config)
    pid = int(context.node_config[wire.PARTITION_ID])
    n_parts = int(context.node_config.get(wire.NUM_PARTITIONS, scenario.data.num_clients))
    if n_parts != scenario.data.num_clients or not 0 <= pid < n_parts:
        raise ValueError(
            f"node config {wire.PARTITION_ID}={pid}, {wire.NUM_PARTITIONS}={n_parts} does not "
            f"fit data.num_clients={scenario.data.num_clients}"
        )
    data_path = context.node_config.get(wire.DATA_PATH)
    data = node_data(scenario.data, scenario.seed, pid, str(data_path) if data_path else None)
    config = msg.content.config_records.get(wire.CONFIG, ConfigRecord())
    server_round = int(config.get(wire.SERVER_ROUND, 0))  # type: ignore[arg-type]
    # Seeded from (run seed, node, round, purpose) so results do not depend on the order
    # in which an engine happens to run the clients.
    seed = int(
        np.random.SeedSequence([scenario.seed, pid, server_round, purpose]).generate_state(1)[0]
    )
    torch.manual_seed(seed)
    model = build_model(
        scenario.model.name, scenario.model.params, data.input_shape, data.num_classes
    )
    records = msg.content.array_records
    arrays = records.get(wire.ARRAYS) or next(iter(records.values()))
    # Strategies may ship extra arrays beside the model (prefixed keys, e.g. FedCurv's).
    extras = {k: v.numpy() for k, v in arrays.items() if k.startswith(wire.CURV_PREFIX)}
    model.load_state_dict(
        {k: torch.from_numpy(v.numpy()) for k, v in arrays.items() if k not in extras}
    )
    return _Job(scenario, pid, data.x, data.y, model, server_round, extras)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run local training with the step the server asked for."""
    start = time.perf_counter()
    job = _job(msg, context, purpose=0)
    config = dict(msg.content.config_records.get(wire.CONFIG, {}))
    cfg = job.scenario.client
    inputs = StepInputs(config, job.model, job.extras, context.state, cfg.batch_size)
    step = select_step(config)(inputs)
    generator = torch.Generator().manual_seed(int(torch.initial_seed()))
    gradient: Gradient = plain_gradient
    if cfg.dp is not None:
        noise = torch.Generator().manual_seed(int(torch.initial_seed()) + 1)
        expected = float(min(cfg.batch_size, len(job.y)))  # q·n with q = batch / n
        gradient = PrivateGradient(cfg.dp, job.model, expected, noise)
    result = train_local(job.model, job.x, job.y, cfg, step, generator, gradient)
    metrics = MetricRecord(
        {
            wire.NUM_EXAMPLES: len(job.y),
            wire.TRAIN_LOSS: result.mean_loss,
            wire.TRAIN_SAMPLES: result.samples,
            wire.DURATION_S: time.perf_counter() - start,
        }
    )
    if cfg.dp is not None:
        rate = min(cfg.batch_size, len(job.y)) / len(job.y)
        metrics[wire.EPSILON] = spend(context.state, cfg.dp, rate, result.steps)
    arrays = ArrayRecord(job.model.state_dict())
    xt, yt = torch.from_numpy(job.x), torch.from_numpy(job.y)
    for key, value in step.finish(job.model, xt, yt).items():
        arrays[key] = Array(np.ascontiguousarray(value))
    return Message(RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on the node's own data."""
    job = _job(msg, context, purpose=1)
    loss, acc = evaluate_model(job.model, job.x, job.y, job.scenario.client.eval_batch_size)
    metrics = MetricRecord(
        {wire.NUM_EXAMPLES: len(job.y), wire.EVAL_LOSS: loss, wire.EVAL_ACCURACY: acc}
    )
    return Message(RecordDict({wire.METRICS: metrics}), reply_to=msg)
