"""The few places where an in-process engine must touch Flower beyond its public API.

Flower builds message metadata from a process-wide task identity that its runtimes
set; an in-process engine must set it too, and assign message ids as a SuperLink
would. Everything that reaches past ``flwr.app``/``flwr.serverapp``/``flwr.clientapp``
is here, pinned to ``flwr==1.41.*`` and covered by ``tests/engine/test_flower_compat.py``
so an upgrade that moves these fails loudly in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flwr.app import Message

# Node id Flower reserves for the SuperLink (flwr.common.constant.SUPERLINK_NODE_ID).
SERVER_NODE_ID = 1


def set_task_identity(run_id: int) -> None:
    """Declare this process the ServerApp task of ``run_id`` (needed by ``Message(...)``)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SERVER_NODE_ID


@contextmanager
def some_task_identity() -> Iterator[None]:
    """Within: a task identity, so messages can be built (a dummy one if there is none).

    The process's own identity, or none, is back afterwards.
    """
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    if saved[1] is None:
        set_task_identity(0)
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def empty_run(run_id: int) -> Any:
    """Return Flower's ``Run`` record for ``run_id`` (what ``Grid.run`` returns)."""
    from flwr.supercore.run import Run

    return Run.create_empty(run_id)


def assign_message_id(message: Message, message_id: str) -> None:
    """Give an instruction message the id a SuperLink would assign on push."""
    message.metadata.__dict__["_message_id"] = message_id
