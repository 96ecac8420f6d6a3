"""``fedavg``: Flower's FedAvg, aggregating the train replies in one pass.

Flower 1.41's ``FedAvg.aggregate_train`` finds each reply's records through views that
``RecordDict`` builds afresh, with a type check per entry, on every lookup (six per
reply between its consistency check and its two aggregations), decodes every array
with ``np.load`` and adds each metric into a type-checked record one value at a time:
about 0.14 ms of Python per reply on a 2-core machine, for a few microseconds of
arithmetic. :class:`FedAvg` reads each reply once, decodes with
:mod:`fedsim.array_codec` and accumulates in plain containers. Its checks are Flower's
and so is its arithmetic, operation for operation and in the same order: the averaged
arrays are bit-identical and the metrics equal (a test compares the two on the same
replies). Replies Flower's checks would reject, and a custom
``train_metrics_aggr_fn``, go to Flower's own code. Its train and evaluate messages are
Flower's, built as copies of the first (``flower_compat.instruction_messages``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategies
from flwr.serverapp.strategy.strategy_utils import (
    aggregate_arrayrecords,
    aggregate_metricrecords,
    validate_message_reply_consistency,
)

from fedsim.array_codec import decode, encode_record, view
from fedsim.engine.flower_compat import instruction_messages
from fedsim.fast_records import store
from fedsim.reply_chunk import ChunkRows
from fedsim.strategies import register_strategy


@register_strategy("fedavg")
class FedAvg(flwr_strategies.FedAvg):
    """Federated averaging (McMahan et al. 2017): Flower's, with faster train aggregation.

    Takes Flower's :class:`~flwr.serverapp.strategy.FedAvg` parameters and behaves as it
    does in every respect but speed (see the module docstring).
    """

    def _construct_messages(
        self, record: RecordDict, node_ids: list[int], message_type: str
    ) -> Iterable[Message]:
        """Flower's messages to ``node_ids`` (built faster: ``instruction_messages``)."""
        return instruction_messages(record, node_ids, message_type)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the replies' arrays and metrics, weighted by ``weighted_by_key``."""
        if self.train_metrics_aggr_fn is not aggregate_metricrecords:
            return super().aggregate_train(server_round, replies)
        valid, _ = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        if not valid:
            return None, None
        # The in-process engine's replies as untouched rows of one stacked chunk: read from
        # the chunk's columns, without making their records. Not under a subclass's own
        # aggregate_train, which may have changed the replies before calling this one.
        if (
            isinstance(replies, ChunkRows)
            and len(valid) == len(replies)
            and type(self).aggregate_train is FedAvg.aggregate_train
        ):
            done = chunk_aggregate(replies, self.weighted_by_key)
            if done is not None:
                return done
        parts = single_records(valid, self.weighted_by_key)
        if parts is None:  # let Flower say what is wrong (or aggregate what it accepts)
            contents = [msg.content for msg in valid]
            validate_message_reply_consistency(contents, self.weighted_by_key, True)
            return aggregate_arrayrecords(contents, self.weighted_by_key), aggregate_metricrecords(
                contents, self.weighted_by_key
            )
        factors = _factors([store(metrics) for _, metrics in parts], self.weighted_by_key)
        return (
            weighted_arrays([a for a, _ in parts], factors),
            weighted_metrics([store(m) for _, m in parts], factors, self.weighted_by_key),
        )


def _factors(metrics: Sequence[Mapping[str, Any]], weighted_by_key: str) -> list[float]:
    """Each reply's weight over their sum, in Flower's arithmetic."""
    weights = [m[weighted_by_key] for m in metrics]
    total = sum(weights)
    return [w / total for w in weights]


def chunk_aggregate(
    replies: ChunkRows, weighted_by_key: str
) -> tuple[ArrayRecord, MetricRecord] | None:
    """What :meth:`FedAvg.aggregate_train` returns for ``replies``, from their chunk's columns.

    Every row of a chunk carries one ``wire.ARRAYS`` and one ``wire.METRICS`` record
    with the chunk's keys, so Flower's consistency checks hold by construction; the
    weighting metric must be there and a number. The same products and sums in reply
    order, so the same bits (tests compare). None where the chunk cannot say.
    """
    chunk, positions = replies.chunk, replies.positions
    if chunk.metric_rows is None:
        return None
    metrics = [chunk.metric_rows[p] for p in positions]
    keys = list(metrics[0])
    if (
        weighted_by_key not in keys
        or any(list(m) != keys for m in metrics)
        or any(isinstance(m[weighted_by_key], list) for m in metrics)
    ):
        return None
    factors = _factors(metrics, weighted_by_key)
    rows = np.asarray(positions)
    arrays = encode_record(
        {key: _weighted_sum(stack[rows], factors) for key, stack in chunk.arrays.items()}
    )
    return arrays, weighted_metrics(metrics, factors, weighted_by_key)


def single_records(
    replies: list[Message], weighted_by_key: str
) -> list[tuple[ArrayRecord, MetricRecord]] | None:
    """Each reply's one ArrayRecord and one MetricRecord, if Flower's checks would pass.

    The checks of ``validate_message_reply_consistency``: one record of each kind per
    reply, under the same name and with the same keys in every reply, the weighting
    metric among them and not a list. None if any fails.
    """
    parts: list[tuple[ArrayRecord, MetricRecord]] = []
    names: tuple[str, str] | None = None
    keys: tuple[list[str], list[str]] | None = None
    for reply in replies:
        arrays: list[tuple[str, ArrayRecord]] = []
        metrics: list[tuple[str, MetricRecord]] = []
        for name, record in store(reply.content).items():
            if isinstance(record, ArrayRecord):
                arrays.append((name, record))
            elif isinstance(record, MetricRecord):
                metrics.append((name, record))
        if len(arrays) != 1 or len(metrics) != 1:
            return None
        (array_name, array_record), (metric_name, metric_record) = arrays[0], metrics[0]
        array_keys, metric_keys = list(store(array_record)), list(store(metric_record))
        if names is None:
            names = (array_name, metric_name)
            keys = (array_keys, metric_keys)
            if weighted_by_key not in metric_keys:
                return None
        # Flower compares the key sets; equal lists (the usual case) are equal sets.
        elif (array_name, metric_name) != names or not (
            _same_keys(array_keys, keys[0])  # type: ignore[index]
            and _same_keys(metric_keys, keys[1])  # type: ignore[index]
        ):
            return None
        if isinstance(store(metric_record)[weighted_by_key], list):
            return None
        parts.append((array_record, metric_record))
    return parts


def _same_keys(keys: list[str], first: list[str]) -> bool:
    """Whether ``keys`` and ``first`` hold the same keys (in any order)."""
    return keys == first or set(keys) == set(first)


def weighted_arrays(records: list[ArrayRecord], factors: list[float]) -> ArrayRecord:
    """``Σ factor·array`` per key, accumulated as Flower's ``aggregate_arrayrecords`` does.

    Per key, one product of the replies' arrays stacked along a leading axis with their
    factors, then one sum over that axis: numpy adds a leading axis of a C-ordered array
    row after row (``total += row``, as Flower adds), so the result is bit-identical to
    Flower's (a test holds it for several shapes and types); each factor is cast as
    numpy casts a Python float multiplying the array.
    """
    if not records:
        return encode_record({})
    stores = [store(r) for r in records]
    keys = list(stores[0])
    if any(list(s) != keys for s in stores):
        return _weighted_arrays_by_key(records, factors)
    return encode_record(
        {key: _weighted_sum(_stacked([view(s[key]) for s in stores]), factors) for key in keys}
    )


def _weighted_sum(stack: np.ndarray, factors: list[float]) -> np.ndarray:
    """``Σ factor·row`` over the stack's rows, in row order (see :func:`weighted_arrays`)."""
    weights = np.asarray(factors, dtype=np.result_type(stack.dtype, 1.0))
    return _in_order_sum(stack * weights.reshape(-1, *([1] * (stack.ndim - 1))))


def _stacked(rows: list[np.ndarray]) -> np.ndarray:
    """``np.stack(rows)`` of equally shaped arrays (concatenated: a tenth of stack's cost)."""
    first = rows[0]
    if first.ndim == 0 or len({r.shape for r in rows}) != 1:
        return np.stack(rows)  # (raises for unequal shapes, as Flower's sum would)
    return np.concatenate(rows).reshape(len(rows), *first.shape)


def _in_order_sum(products: np.ndarray) -> np.ndarray:
    """``products[0] + products[1] + ...`` added in row order."""
    rows = products.reshape(len(products), -1)
    if rows.shape[1] == 1:
        # One column would be summed along its contiguous axis, pairwise; beside a
        # column of zeros it is summed row by row again (the zeros add nothing).
        rows = np.concatenate([rows, np.zeros_like(rows)], axis=1)
    total: np.ndarray = np.add.reduce(rows, axis=0)
    return total[: products[0].size].reshape(products.shape[1:])


def _weighted_arrays_by_key(records: list[ArrayRecord], factors: list[float]) -> ArrayRecord:
    """:func:`weighted_arrays` for records whose keys differ (Flower's loop, key by key)."""
    total: dict[str, np.ndarray] = {}
    for record, factor in zip(records, factors, strict=True):
        for key, value in record.items():
            if key not in total:
                total[key] = decode(value) * factor
            else:
                total[key] += decode(value) * factor
    return encode_record({k: np.asarray(v) for k, v in total.items()})


def weighted_metrics(
    records: Sequence[Mapping[str, Any]], factors: list[float], weighted_by_key: str
) -> MetricRecord:
    """``Σ factor·metric`` per key (lists element-wise), as ``aggregate_metricrecords``."""
    total: dict[str, Any] = {}
    for record, factor in zip(records, factors, strict=True):
        for key, value in record.items():
            if key == weighted_by_key:
                continue
            if key not in total:
                total[key] = (
                    [v * factor for v in value] if isinstance(value, list) else value * factor
                )
            elif isinstance(value, list):
                total[key] = [c + v * factor for c, v in zip(total[key], value, strict=True)]
            else:
                total[key] = total[key] + value * factor
    return MetricRecord(total)
