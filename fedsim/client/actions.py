"""Client actions: message types beyond ``train`` and ``evaluate`` that an algorithm handles.

An algorithm's client half registers a handler for ``<category>.<action>`` (LASGD's
``train.lasgd`` block, FedAwS's ``query.labels``); the ClientApp routes such messages
to it, whichever module registered it and whenever (a plugin imported after the app
works too). A handler gets what any Flower handler gets, ``(message, context)``, and
builds on :mod:`fedsim.client.job` for the job and its reply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from flwr.app import Context, Message

from fedsim.registry import Registry

Handler = Callable[[Message, Context], Message]
Category = Literal["train", "evaluate", "query"]


@dataclass(frozen=True)
class Action:
    """A handler for messages of type ``<category>.<name>``."""

    category: Category
    name: str
    handler: Handler

    @property
    def message_type(self) -> str:
        """The Flower message type this action handles."""
        return f"{self.category}.{self.name}"


ACTIONS: Registry[Action] = Registry("client actions")


def register_action(category: Category, name: str) -> Callable[[Handler], Handler]:
    """Register a client handler for message type ``<category>.<name>``.

    Examples
    --------
    >>> @register_action("query", "my-stats")
    ... def my_stats(msg: Message, context: Context) -> Message:
    ...     ...
    """

    def decorator(fn: Handler) -> Handler:
        action = Action(category, name, fn)
        ACTIONS.add(action.message_type, action, help=(fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return decorator
