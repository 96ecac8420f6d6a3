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
