"""One client job: resolving it (scenario, partition, model) and assembling its reply.

Shared by the ClientApp's handlers (:mod:`fedsim.client.app`), the stacked path
(:mod:`fedsim.client.stacked`) and algorithms' own client actions (LASGD's block, FedAwS's
labels query), none of which import the app itself.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

from fedsim import wire
from fedsim.array_codec import decode, encode
from fedsim.client import rgp  # noqa: F401  (registers client.dp.mode rgp)
from fedsim.client.attacks import poisoned_labels
from fedsim.client.dp import GRADIENT_MODES, PrivateGradient, private_gradient, spend
from fedsim.client.loop import Gradient, default_gradient, num_local_steps, train_local
from fedsim.client.losses import build_loss
from fedsim.client.low_precision import FixedPointWeights
from fedsim.client.model_cache import model_for_job
from fedsim.client.optimizers import LocalOptimizer
from fedsim.client.steps import StepInputs, select_step
from fedsim.client.unread_keys import warn_unread
from fedsim.config.schema import Scenario
from fedsim.data.node_data import NodeData, node_data
from fedsim.fast_records import filled
from fedsim.run_config import scenario_from_run_config
from fedsim.training_device import client_device, on_device, set_process_threads


@dataclass
class Job:
    """What one job works on: its scenario, node, data, model and what arrived."""

    scenario: Scenario
    partition_id: int
    data: NodeData
    model: nn.Module
    device: str
    server_round: int
    extras: dict[str, np.ndarray]
    missing: frozenset[str]


def partition(context: Context) -> tuple[Scenario, int, NodeData]:
    """Resolve the scenario, this node's partition id and its examples.

    A deployed node may read its examples from the file named by ``data-path``.
    """
    scenario = scenario_from_run_config(context.run_config)
    pid = int(context.node_config[wire.PARTITION_ID])
    n_parts = int(context.node_config.get(wire.NUM_PARTITIONS, scenario.data.num_clients))
    if n_parts != scenario.data.num_clients or not 0 <= pid < n_parts:
        raise ValueError(
            f"node config {wire.PARTITION_ID}={pid}, {wire.NUM_PARTITIONS}={n_parts} does not "
            f"fit data.num_clients={scenario.data.num_clients}"
        )
    data_path = context.node_config.get(wire.DATA_PATH)
    return (
        scenario,
        pid,
        node_data(scenario.data, scenario.seed, pid, str(data_path) if data_path else None),
    )


TRAIN_PURPOSE, EVALUATE_PURPOSE = 0, 1  # the last entry of a job's seed
_EMPTY_ARRAYS, _EMPTY_METRICS = ArrayRecord(), MetricRecord()


def train_config(msg: Message) -> ConfigRecord:
    """The message's config record (empty if it has none)."""
    # One lookup: ``content.config_records`` would first build a view of every record.
    config = msg.content.get(wire.CONFIG)
    return config if isinstance(config, ConfigRecord) else ConfigRecord()


def received_arrays(msg: Message) -> ArrayRecord:
    """The arrays the message carries: its ``arrays`` record, else its first array record."""
    arrays = msg.content.get(wire.ARRAYS)
    if isinstance(arrays, ArrayRecord) and len(arrays):
        return arrays
    return next(iter(msg.content.array_records.values()))


def job_seed(run_seed: int, partition_id: int, server_round: int, purpose: int) -> int:
    """The seed of one job: torch's default generator and the batch order start from it.

    Seeded from (run seed, node, round, purpose) so results do not depend on the order
    in which an engine happens to run the clients (or whether it trains them together).
    """
    words = (run_seed, partition_id, server_round, purpose)
    # The same entropy as the list of ints when each fits one 32-bit word, converted
    # faster (~18 vs ~28 µs a job); other values go through numpy's own conversion.
    entropy = np.array(words, np.uint32) if all(0 <= w < 2**32 for w in words) else list(words)
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def resolve_job(
    msg: Message, context: Context, purpose: int, *, received_model: bool = True
) -> Job:
    """Resolve scenario, data partition and received model; seed this job's RNG.

    With ``received_model=False`` the model keeps its fresh initialisation: the caller
    loads the weights itself (an LASGD worker computes them from its kept model).
    """
    scenario, pid, data = partition(context)
    config = train_config(msg)
    server_round = int(config.get(wire.SERVER_ROUND, 0))  # type: ignore[arg-type]
    if config.get(wire.LABEL_FLIP):  # a label-flip attacker's poisoned data
        data = dataclasses.replace(data, y=poisoned_labels(data.y, data.num_classes))
    seed = job_seed(scenario.seed, pid, server_round, purpose)
    # The CPU generator only: torch.manual_seed also queues CUDA/XPU seeding with a stack
    # trace when those are not initialised (~0.3 ms, a noticeable share of a tiny job).
    torch.default_generator.manual_seed(seed)
    set_process_threads(context.run_config, wire.RUN_TORCH_THREADS)  # Ray's actors
    device = client_device(scenario.engine.device, context.node_config)
    if device.startswith("cuda"):  # on-device random draws (dropout masks) seeded too
        torch.cuda.manual_seed(seed)
    arrays = received_arrays(msg) if received_model else {}
    model = model_for_job(
        scenario.model.name,
        scenario.model.params,
        data.input_shape,
        data.num_classes,
        overwritten=arrays.keys(),
        reusable=scenario.client.dp is None,
        device=device,
    )
    # Again: what follows draws the same numbers whether the model was built or reused.
    torch.default_generator.manual_seed(seed)
    if not received_model:
        return Job(scenario, pid, data, model, device, server_round, {}, frozenset())
    own = set(model.state_dict())
    # Strategies may ship extra arrays beside the model (FedCurv's sums, FedAwS's row)
    # and withhold model arrays (FedAwS's class embeddings): the local step's extras
    # and fills.
    extras = {k: decode(v) for k, v in arrays.items() if k not in own}
    received = {k: torch.from_numpy(decode(v)) for k, v in arrays.items() if k in own}
    model.load_state_dict(received, strict=False)
    missing = frozenset(own - set(received))
    return Job(scenario, pid, data, model, device, server_round, extras, missing)


def placed_data(
    job: Job, config: Mapping[str, object], context: Context
) -> tuple[torch.Tensor, torch.Tensor]:
    """The node's examples as tensors on its training device (moved once per process)."""
    key = None
    if job.device != "cpu":  # the CPU shares the arrays' memory: nothing to keep
        data_path = context.node_config.get(wire.DATA_PATH)
        scenario_key = job.scenario.data.model_dump_json()
        key = (
            scenario_key,
            job.scenario.seed,
            job.partition_id,
            data_path,
            bool(config.get(wire.LABEL_FLIP)),
        )
    return (
        on_device(job.data.x, job.device, None if key is None else (*key, "x")),
        on_device(job.data.y, job.device, None if key is None else (*key, "y")),
    )


def check_complete(missing: frozenset[str], filled: frozenset[str] = frozenset()) -> None:
    """Refuse to run a model whose arrays the server neither sent nor a step supplies."""
    if missing - filled:
        raise ValueError(f"the message lacks model arrays {sorted(missing - filled)}")


def train_job(
    job: Job,
    msg: Message,
    context: Context,
    start: float,
    optimizer: LocalOptimizer | None = None,
) -> Message:
    """Train ``job.model`` with the step the server asked for; reply as the step says."""
    config = dict(train_config(msg))
    cfg = job.scenario.client
    step_cls = select_step(config)
    if cfg.dp is not None and step_cls.dp_refusal is not None:
        raise ValueError(f"client.dp: {step_cls.dp_refusal}")  # validation refuses it first
    # In-process runs share one run id; the run directory tells them apart.
    warn_unread((context.run_id, str(context.run_config.get(wire.RUN_DIR, ""))), step_cls, config)
    inputs = StepInputs(
        config,
        job.model,
        job.extras,
        context.state,
        cfg.batch_size,
        job.data,
        job.partition_id,
        context.node_id,
        lr=cfg.optimizer.lr,
        local_steps=num_local_steps(len(job.data.y), cfg),
        loss=build_loss(cfg.loss, job.data.y, job.data.num_classes, job.data.global_label_counts),
    )
    step = step_cls(inputs)
    check_complete(job.missing, step.fills)
    fixed_point = None
    if cfg.weights is not None:  # the model lives in fixed point while it trains
        seed = int(torch.initial_seed())
        fixed_point = FixedPointWeights(cfg.weights, np.random.default_rng([seed, 2]))
        fixed_point(job.model)
    work = None
    if step.trains:
        generator = torch.Generator().manual_seed(int(torch.initial_seed()))
        gradient: Gradient = default_gradient(job.model, step)
        if cfg.dp is not None:
            noise = torch.Generator().manual_seed(int(torch.initial_seed()) + 1)
            expected = float(min(cfg.batch_size, len(job.data.y)))  # q·n with q = batch / n
            if cfg.dp.mode in GRADIENT_MODES:  # rgp: its noise goes on the carriers
                gradient = private_gradient(cfg.dp, job.model, expected, noise, context.state)
            else:
                gradient = PrivateGradient(cfg.dp, job.model, expected, noise)
        xt, yt = placed_data(job, config, context)
        work = train_local(
            job.model,
            xt,
            yt,
            cfg,
            step,
            generator,
            gradient,
            optimizer,
            after_step=fixed_point,
        )
    reply = step.reply(job.model, job.data, work)
    result = reply.work
    metrics = filled(  # Python numbers only: no need to check each (fast_records)
        _EMPTY_METRICS,
        {
            wire.NUM_EXAMPLES: len(job.data.y)
            if result.num_examples is None
            else float(result.num_examples),
            wire.TRAIN_SAMPLES: int(result.samples),
            wire.DURATION_S: time.perf_counter() - start,
        },
    )
    if fixed_point is not None:
        metrics[wire.MODEL_BYTES] = fixed_point.model_bytes(job.model)
    for name, number in reply.metrics.items():  # the step's own
        metrics[name] = number
    if cfg.dp is None:
        metrics[wire.TRAIN_LOSS] = result.mean_loss
    else:  # the loss is a statistic of the private data: it stays on the device
        batch = min(cfg.batch_size, len(job.data.y))
        metrics[wire.EPSILON] = spend(context.state, cfg.dp, len(job.data.y), batch, result.steps)
    arrays = filled(  # arrays encoded here: no need to check each (fast_records)
        _EMPTY_ARRAYS,
        {
            key: encode(value if isinstance(value, torch.Tensor) else np.ascontiguousarray(value))
            for key, value in reply.arrays.items()
        },
    )
    return Message(RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics}), reply_to=msg)
