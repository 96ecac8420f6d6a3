"""The server side of ``compression``: a wrapper that codes the downlink and decodes the uplink.

Around any strategy that runs Flower's round loop (fedsim applies it when the scenario's
``compression`` section codes either direction). The arrays of every train and evaluate
message go out rounded and packed (:mod:`fedsim.rounding`, the
``compression.downlink``
method and bits; one coding per distinct content, so every node of a round receives the
same coded model), and the server remembers, per node, the arrays that node will decode.
Train replies coded by the client's mod (:mod:`fedsim.algorithms.compression.client`) as differences
to those arrays are decoded against them before the wrapped strategy aggregates; the
engines count the bytes of the coded messages, so ``bytes_up``, ``bytes_down`` and the
virtual clock see the true payloads. The server's model stays in full precision.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from numpy.typing import NDArray

from fedsim.algorithms.compression.codec import (
    code_record,
    decode_record,
    map_records,
    plain_arrays,
)
from fedsim.config.schema import LinkCompression
from fedsim.strategies.wrapper import StrategyWrapper

_DOWNLINK = 0xD0C0DE  # purpose tag of the downlink's rounding draws


class CompressedLinks(StrategyWrapper):
    """Code ``strategy``'s messages for the downlink and decode its uplink replies.

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy.
    downlink : LinkCompression
        How the server codes the arrays it sends.
    seed : int
        Seed of the downlink's rounding draws (with the round and message kind).
    """

    def __init__(self, strategy: Strategy, *, downlink: LinkCompression, seed: int) -> None:
        super().__init__(strategy)
        self.downlink = downlink
        self.seed = seed
        self._sent: dict[int, dict[str, NDArray[Any]]] = {}

    def _code(self, messages: Iterable[Message], server_round: int, kind: int) -> list[Message]:
        """Code each distinct content once; remember what each node will decode."""
        rng = np.random.default_rng([self.seed, server_round, kind, _DOWNLINK])
        coded: dict[int, tuple[RecordDict, dict[str, NDArray[Any]]]] = {}
        out = []
        for message in messages:
            key = id(message.content)
            if key not in coded:
                content = map_records(message.content, lambda r: code_record(r, self.downlink, rng))
                received = plain_arrays(map_records(content, decode_record))
                coded[key] = (content, received)
            message.content, received = coded[key]
            if kind == 0:
                self._sent[message.metadata.dst_node_id] = received
            out.append(message)
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's train messages, coded for the downlink."""
        self._sent = {}
        messages = self.strategy.configure_train(server_round, arrays, config, grid)
        return self._code(messages, server_round, 0)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluate messages, coded for the downlink."""
        messages = self.strategy.configure_evaluate(server_round, arrays, config, grid)
        return self._code(messages, server_round, 1)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode the replies against what each node received, then aggregate them."""
        decoded = []
        for reply in replies:
            if not reply.has_error():
                references = self._sent.get(reply.metadata.src_node_id, {})
                reply.content = map_records(
                    reply.content, partial(decode_record, references=references)
                )
            decoded.append(reply)
        return self.strategy.aggregate_train(server_round, decoded)
