"""An algorithm's spec: what validation, the engine and the ClientApp need to know of it.

A spec is data, declared in the algorithm package's ``__init__.py`` (or, for a plugin,
by :func:`fedsim.register_algorithm` beside its strategy class). It names no code to
run at validation time except its strategy's own parameters model; the combination
rules (:mod:`fedsim.config.rules`) read specs, never strategy classes or name strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

# Engine capabilities an algorithm may need (engine.name values that provide them are
# listed in fedsim.config.rules).
VIRTUAL_CLOCK = "virtual-clock"  # simulated time and device links (LASGD's All-Reduce)
# The clock kept on whole rounds of Flower's loop (system.deadline_s, stragglers,
# dropouts, injected failures): every engine's grid stamps and cuts the replies.
ROUND_CLOCK = "round-clock"


@dataclass(frozen=True)
class AlgorithmSpec:
    """What one algorithm is, for everything outside its package.

    Attributes
    ----------
    name : str
        Its ``strategy.name`` in scenarios (the strategy registry's name).
    server : str
        ``pkg.module:Class`` of its Flower strategy (imported when strategies load).
    client : str, optional
        Module of its client half (local steps, client actions); every ClientApp
        process imports it, so its registrations are there wherever clients run.
    steps : tuple of str
        The local steps its strategy asks clients for (names in ``fedsim.client.steps``).
    actions : tuple of str
        Message types beyond ``train``/``evaluate`` it sends (``train.lasgd``).
    reply_prefixes : tuple of str
        Prefixes of reply arrays that stand for one model parameter each
        (``<prefix><parameter name>``); the engine checks each against the parameter's
        shape and refuses other unexpected arrays.
    dp_refusal : str, optional
        Why it cannot run under ``client.dp`` (what its clients release that DP-SGD
        does not cover); None: it can.
    trains_with_loss : bool
        Whether its clients train on ``client.loss`` (LDPC's clients only multiply).
    needs : tuple of str
        Engine capabilities it needs (:data:`VIRTUAL_CLOCK`).
    params : pydantic model class, optional
        Its typed ``strategy.params`` (every key checked against it before anything
        runs); None: the strategy's constructor signature is the schema.
    """

    name: str
    server: str
    client: str | None = None
    steps: tuple[str, ...] = ("plain",)
    actions: tuple[str, ...] = ()
    reply_prefixes: tuple[str, ...] = ()
    dp_refusal: str | None = None
    trains_with_loss: bool = True
    needs: tuple[str, ...] = ()
    params: type[BaseModel] | None = None
    help: str = ""


# What a strategy that registered no spec (Flower's own, a register_strategy class) is
# taken to be: it asks for the plain (or proximal) step and releases only models.
def default_spec(name: str, server: str, steps: tuple[str, ...] = ("plain",)) -> AlgorithmSpec:
    """The spec of a strategy that declares none (``steps``: what it is known to ask for)."""
    return AlgorithmSpec(name=name, server=server, steps=steps)


@dataclass(frozen=True)
class StrategyLink:
    """One strategy of a scenario's chain: the strategy, or a wrapper's inner one.

    Attributes
    ----------
    key : str
        Its scenario key (``strategy``, ``strategy.params.strategy``, ...).
    name : str
        The name it was given (registry name or ``pkg.module:Class``).
    params : mapping
        Its ``params`` as given.
    spec : AlgorithmSpec
        Its algorithm's spec (or the default one).
    strategy_cls : type
        The strategy class.
    accepted : tuple of str, optional
        Keyword parameters its constructor accepts (None: any).
    """

    key: str
    name: str
    params: Mapping[str, Any]
    spec: AlgorithmSpec
    strategy_cls: type
    accepted: tuple[str, ...] | None = field(default=None)
