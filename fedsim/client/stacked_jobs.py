"""The train jobs of :mod:`fedsim.client.stacked`, resolved, and what they share.

A round's train messages share one content (Flower's strategies send the same record
to every node), so what it says is read once (:func:`read_content`); the jobs' seeds
are computed for the whole dispatch at once (:func:`seed_jobs`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Context, Message

from fedsim import wire
from fedsim.client.job import TRAIN_PURPOSE, received_arrays, train_config
from fedsim.client.job_seeds import job_seeds
from fedsim.client.steps import LocalStep, select_step
from fedsim.config.schema import Scenario
from fedsim.data.node_data import NodeData


@dataclass
class StackedJob:
    """One train job, resolved."""

    index: int  # position among the jobs
    message: Message
    context: Context
    scenario: Scenario
    partition_id: int
    data: NodeData
    config: dict[str, Any]
    arrays: ArrayRecord
    server_round: int
    step_cls: type[LocalStep]
    device: str
    content_key: tuple[Any, ...]  # its content's part of the group key (SentContent.key)
    seed: int = 0  # the ClientApp job's seed: set for a dispatch's jobs at once


@dataclass(frozen=True)
class SentContent:
    """What a train message's content says to its jobs, read once per content."""

    content: Any  # kept, so that the id it is filed under is not reused
    config: dict[str, Any]
    step_cls: type[LocalStep] | None  # None: the ClientApp reports the bad step
    arrays: ArrayRecord | None  # None: no arrays, the ClientApp reports it
    server_round: int
    # What jobs must share to train together, as far as the content says: the config's
    # values and the arrays' identity (Flower's strategies send every node the same
    # arrays, so a round makes one group).
    key: tuple[Any, ...]
    # By scenario id: (scenario, refused by the ClientApp, why they train one by one).
    verdicts: dict[int, tuple[Scenario, bool, str | None]] = field(default_factory=dict)


def read_content(message: Message) -> SentContent:
    """What ``message``'s content says to a train job (shared by the jobs it goes to)."""
    config = dict(train_config(message))
    try:
        step_cls: type[LocalStep] | None = select_step(config)
    except ValueError:
        step_cls = None
    try:
        arrays: ArrayRecord | None = received_arrays(message)
    except StopIteration:
        arrays = None
    server_round = int(config.get(wire.SERVER_ROUND, 0))  # type: ignore[arg-type]
    key = (
        tuple(sorted((k, repr(v)) for k, v in config.items())),
        tuple((k, id(v)) for k, v in (arrays or {}).items()),
    )
    return SentContent(message.content, config, step_cls, arrays, server_round, key)


def seed_jobs(clients: Iterable[StackedJob]) -> None:
    """Give each client its ClientApp job's seed, computed for all of them at once."""
    runs: dict[tuple[int, int], list[StackedJob]] = {}
    for client in clients:
        runs.setdefault((client.scenario.seed, client.server_round), []).append(client)
    for (run_seed, server_round), members in runs.items():
        seeds = job_seeds(run_seed, [c.partition_id for c in members], server_round, TRAIN_PURPOSE)
        for client, seed in zip(members, seeds, strict=True):
            client.seed = seed
