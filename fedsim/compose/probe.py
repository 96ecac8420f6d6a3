"""What a strategy without a spec asks its clients to run: one dry ``configure_train``.

A plain ``register_strategy`` class (or a ``pkg.module:Class``) declares no steps; it
selects one at run time, in the config of its train messages (``local-step``, or a
step's trigger key). Composition calls its ``configure_train`` once on a grid of
``num_nodes`` idle nodes that delivers nothing, and reads the step its messages would
select, so a step the scenario cannot run (one that refuses ``client.dp``) is refused
before training. A strategy that tries to talk to its nodes while configuring (a
query), or fails on the probe grid, is left unprobed: its clients then check at run
time, as before.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import wire
from fedsim.engine.flower_compat import empty_run, some_task_identity
from fedsim.server.node_sampling import SAMPLER


class _Delivery(Exception):
    """The strategy tried to send while configuring: not something a probe can answer."""


class _ProbeGrid(Grid):
    """``num_nodes`` connected nodes; sending anything stops the probe."""

    def __init__(self, num_nodes: int) -> None:
        self._nodes = list(range(2, num_nodes + 2))  # 1 is the SuperLink's id

    @property
    def run(self) -> Any:
        return empty_run(0)

    def set_run(self, run_id: Any) -> None:
        return None

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise _Delivery

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise _Delivery

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        raise _Delivery


def probed_steps(strategy: Strategy, num_nodes: int) -> tuple[str, ...] | None:
    """Names of the local steps ``strategy``'s first train messages select (None: unknown).

    The states of ``random`` and of Flower's node sampler
    (:data:`~fedsim.server.node_sampling.SAMPLER`) are restored afterwards.
    """
    from fedsim.algorithms import load_client_halves
    from fedsim.client.steps import STEPS, select_step

    load_client_halves()  # every shipped step registered, as in a ClientApp
    state, sampling = random.getstate(), SAMPLER.getstate()
    try:
        with some_task_identity():
            messages = list(
                strategy.configure_train(1, ArrayRecord(), ConfigRecord(), _ProbeGrid(num_nodes))
            )
    except Exception:  # a query, or anything the probe grid cannot stand in for
        return None
    finally:
        random.setstate(state)
        SAMPLER.setstate(sampling)
    names = {STEPS.get(name): name for name in STEPS.names()}
    found: list[str] = []
    for msg in messages:
        for config in msg.content.config_records.values():
            try:
                found.append(names[select_step(config)])
            except ValueError:  # a local-step no module registered: its name, as sent
                found.append(str(config[wire.LOCAL_STEP]))
    return tuple(dict.fromkeys(found))
