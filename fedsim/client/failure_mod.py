"""The client side of loud failures: a client mod that sends its traceback home.

Flower's runtimes turn a ClientApp's exception into an error reply whose reason is the
exception's type and message only; the traceback stays in the node's log, which a
simulation's user never sees. This mod (outermost on fedsim's ClientApp) catches what
the handler raised and replies with an error whose reason also holds the client's
traceback (its last :data:`MAX_TRACEBACK_CHARS` characters), on every engine, so the
server can print the first failure of each kind (:mod:`fedsim.failure_watch`).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

from flwr.app import Context, Error, Message

from fedsim.wire import CLIENT_APP_RAISED_EXCEPTION, TRACEBACK_MARK

CallNext = Callable[[Message, Context], Message]
MAX_TRACEBACK_CHARS = 4000


def failure_mod(msg: Message, ctx: Context, call_next: CallNext) -> Message:
    """Run the handler; turn what it raises into an error reply carrying the traceback."""
    try:
        return call_next(msg, ctx)
    except Exception as exc:  # a failing client never kills a run: it replies an error
        text = "".join(traceback.format_exception(exc))[-MAX_TRACEBACK_CHARS:]
        first = str(exc).splitlines()[0] if str(exc) else ""
        reason = f"node {ctx.node_id}: {type(exc).__name__}: {first}{TRACEBACK_MARK}{text}"
        return Message(Error(CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)
