"""A Flower ``Grid`` wrapper that keeps fedsim's per-round telemetry.

The in-process grid counts what it carries itself. Under Flower's own runtimes (a
SuperLink deployment, the Ray simulation) the ServerApp gets Flower's grid; wrapping
it counts the same participants, failures, dropouts, bytes and train loss from the
messages that pass through, so ``metrics.jsonl`` has the same fields on every engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedsim.engine.telemetry import Telemetry, content_bytes


class ObservedGrid(Grid):
    """Delegate every call to ``inner`` and count the messages in :attr:`telemetry`.

    Parameters
    ----------
    inner : Grid
        The grid the runtime handed to the ServerApp.
    """

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.telemetry = Telemetry()

    def set_run(self, run: Any) -> None:
        """Set the run the inner grid operates in."""
        self.inner.set_run(run)

    @property
    def run(self):  # type: ignore[no-untyped-def]  # flwr's Run is not a public type
        """Run information of the inner grid."""
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create a message through the inner grid (deprecated in Flower)."""
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Return the ids of the connected nodes."""
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push messages, counting their bytes."""
        messages = list(messages)
        self._sent(messages)
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull the replies that have arrived, counting them."""
        return self._received(self.inner.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push messages and wait for their replies (or ``timeout``), counting both."""
        messages = list(messages)
        self._sent(messages)
        return self._received(self.inner.send_and_receive(messages, timeout=timeout))

    def _sent(self, messages: list[Message]) -> None:
        self.telemetry.current.bytes_down += sum(content_bytes(m) for m in messages)

    def _received(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        for reply in replies:
            self.telemetry.record_upload(reply)
            self.telemetry.record_delivery(reply)
        return replies
