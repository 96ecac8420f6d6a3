"""The few places where an in-process engine must touch Flower beyond its public API.

Flower builds message metadata from a process-wide task identity that its runtimes
set; an in-process engine must set it too, and assign message ids as a SuperLink
would. Where fedsim builds many messages at once (a round's instructions, a stacked
chunk's replies), it sets their metadata as Flower's constructor does, without the
constructor's per-message checks. Everything that reaches past ``flwr.app``/
``flwr.serverapp``/``flwr.clientapp`` is here, pinned to ``flwr==1.41.*`` and covered by
``tests/engine/test_flower_compat.py`` so an upgrade that moves these fails loudly in one
place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from flwr.app import Message, RecordDict
from flwr.app.metadata import Metadata
from flwr.supercore.date import now

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


def assign_message_ids(messages: Sequence[Message], message_ids: Sequence[str]) -> None:
    """:func:`assign_message_id` for each message (a dispatch's, in one call)."""
    for message, message_id in zip(messages, message_ids, strict=True):
        message.__dict__["_metadata"].__dict__["_message_id"] = message_id


def instruction_messages(content: RecordDict, node_ids: Sequence[int], kind: str) -> list[Message]:
    """``Message(content=content, dst_node_id=n, message_type=kind)`` for each node ``n``.

    The first is Flower's own; the others copy its metadata with their own destination.
    Flower's constructor checks its arguments and reads the clock and the task identity
    for each message (~6 µs a message, flwr 1.41); a copy is a fraction of that. The
    messages share ``content``, as those of Flower's ``FedAvg._construct_messages`` do.
    """
    if not node_ids:
        return []
    first = Message(content=content, dst_node_id=node_ids[0], message_type=kind)
    fields = first.metadata.__dict__
    out = [first]
    for node in node_ids[1:]:
        metadata = Metadata.__new__(Metadata)
        metadata.__dict__.update(fields)
        metadata.__dict__["_dst_node_id"] = node
        out.append(_message(metadata, content))
    return out


def timestamp() -> float:
    """Now, as the POSIX timestamp Flower stamps on a message it creates."""
    return now().timestamp()


def reply_message(
    content: RecordDict,
    reply_to: Message,
    current: float | None = None,
    kind: type[Message] = Message,
) -> Message:
    """``Message(content, reply_to=reply_to)``, the metadata set as Flower's constructor sets it.

    Without its argument checks and message-type validation (~13 against ~3 µs, flwr
    1.41): for replies fedsim builds itself, to messages Flower built. ``current``: the
    creation time (a POSIX timestamp) when the caller read the clock for several
    replies at once; by default the clock is read here. ``kind``: ``Message`` or a
    subclass of it that keeps Flower's fields.
    """
    sent = reply_to.metadata
    if current is None:
        current = timestamp()
    metadata = Metadata.__new__(Metadata)
    metadata.__dict__.update(
        _run_id=sent.run_id,
        _message_id="",  # set by the SuperLink
        _src_node_id=sent.dst_node_id,
        _dst_node_id=sent.src_node_id,
        _src_task_id=sent.dst_task_id,
        _dst_task_id=sent.src_task_id,
        _reply_to_message_id=sent.message_id,
        _group_id=sent.group_id,
        _created_at=current,
        _ttl=sent.created_at + sent.ttl - current,  # Flower's limit for a reply without a TTL
        _message_type=sent.message_type,
    )
    return _message(metadata, content, kind)


def plain_message(metadata: Metadata, content: RecordDict) -> Message:
    """A Flower ``Message`` of these fields (what a reply subclass pickles as)."""
    return _message(metadata, content)


def _message(metadata: Metadata, content: RecordDict, kind: type[Message] = Message) -> Message:
    """A content message with ``metadata``, its fields as Flower's constructor leaves them."""
    metadata.__dict__["_delivered_at"] = ""  # Flower's backward compatibility field
    message = kind.__new__(kind)
    message.__dict__.update(_metadata=metadata, _content=content, _error=None)
    return message
