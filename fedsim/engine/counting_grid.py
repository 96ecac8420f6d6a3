"""Telemetry for grids that keep none: Flower's own, under the Ray engine or a deployment.

The in-process grid counts participants, failures, bytes and the train loss as it
delivers messages. A Flower grid does not, so the ServerApp wraps it in
:class:`CountingGrid`, which counts the same things from the messages and replies that
pass through it (there is no virtual clock there: no stragglers or dropouts to count).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedsim.engine.telemetry import Telemetry, content_bytes


class CountingGrid(Grid):
    """A :class:`flwr.serverapp.Grid` that forwards to ``grid`` and keeps ``telemetry``.

    Parameters
    ----------
    grid : Grid
        The grid that really carries the messages.
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.telemetry = Telemetry()

    def set_run(self, run: object) -> None:
        """Set the run of the wrapped grid."""
        self.grid.set_run(run)  # type: ignore[arg-type]  # flwr's Run is not public

    @property
    def run(self):  # type: ignore[no-untyped-def]  # flwr's Run is not a public type
        """Run information of the wrapped grid."""
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create a message through the wrapped grid."""
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Node ids of the wrapped grid."""
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push through the wrapped grid, counting the bytes sent."""
        messages = self._sent(messages)
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull through the wrapped grid, counting what arrives."""
        return self._received(self.grid.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send and receive through the wrapped grid, counting both ways."""
        sent = self._sent(messages)
        return self._received(self.grid.send_and_receive(sent, timeout=timeout))

    def _sent(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        self.telemetry.current.bytes_down += sum(content_bytes(m) for m in messages)
        return messages

    def _received(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        for reply in replies:
            if not reply.has_error():
                self.telemetry.current.bytes_up += content_bytes(reply)
            self.telemetry.count_delivered(reply)
        return replies
