"""Pins the Flower internals the in-process engine relies on (fails loudly on upgrade)."""

from __future__ import annotations

import subprocess
import sys

import flwr
from flwr.app import Message, RecordDict

from fedsim.engine.flower_compat import assign_message_id, empty_run, set_task_identity


def test_flower_version_is_the_pinned_one() -> None:
    assert flwr.__version__.startswith("1.41."), flwr.__version__


def test_message_needs_a_task_identity_outside_a_flower_runtime() -> None:
    code = (
        "from flwr.app import Message, RecordDict\n"
        "try:\n    Message(RecordDict(), 5, 'train')\nexcept RuntimeError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "TaskIdentity.run_id is not set" in out.stdout


def test_compat_shims_work() -> None:
    set_task_identity(42)
    msg = Message(RecordDict(), 5, "train")
    assert msg.metadata.run_id == 42
    assign_message_id(msg, "abc")
    assert msg.metadata.message_id == "abc"
    reply = Message(RecordDict(), reply_to=msg)
    assert reply.metadata.reply_to_message_id == "abc"
    assert empty_run(42).run_id == 42


def _fields(message: Message) -> dict[str, object]:
    meta = dict(message.metadata.__dict__)
    meta.pop("_created_at")
    meta.pop("_ttl")
    return {**meta, "content": message.content, "error": message.__dict__["_error"]}


def test_fast_messages_are_flowers_own() -> None:
    """instruction_messages and reply_message set what Flower's constructor sets."""
    from fedsim.engine.flower_compat import instruction_messages, reply_message

    set_task_identity(7)
    content = RecordDict()
    ours = instruction_messages(content, [1001, 1002, 1003], "train")
    for node, message in zip([1001, 1002, 1003], ours, strict=True):
        flowers = Message(content=content, dst_node_id=node, message_type="train")
        assert _fields(message) == _fields(flowers)
        assert message.metadata.ttl == flowers.metadata.ttl
    assert len({id(m.metadata) for m in ours}) == 3  # each its own metadata
    assign_message_id(ours[1], "7-1")
    reply, flowers = reply_message(content, ours[1]), Message(content, reply_to=ours[1])
    assert _fields(reply) == _fields(flowers)
    assert abs(reply.metadata.ttl - flowers.metadata.ttl) < 1.0  # both: what is left of it
    assert reply.metadata.reply_to_message_id == "7-1"
