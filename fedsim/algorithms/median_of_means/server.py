"""``median-of-means``: robust train aggregation around any strategy.

Laforgue, Clémençon & Bertail, "On Medians of (Randomized) Pairwise Means" (ICML 2019):
a median-of-means estimator keeps its guarantees when its blocks are drawn by sampling
without replacement rather than by a fixed segmentation. Their randomized MoM draws
each of the K blocks independently: B of the n points, uniformly without replacement
(so two blocks may share points). Each round, with n train replies, K =
``min(blocks, n)``, and the draws seeded by ``(seed, round)``:

- ``blocks_sampling: without_replacement`` (default, the paper's): K blocks of equal
  size B = ⌊n/K⌋, each drawn independently, without replacement within the block;
- ``blocks_sampling: disjoint``: one random permutation cut into K disjoint blocks of
  sizes differing by at most one (at K = 15 and n = 20: 10 singletons and 5 pairs).

Each block's example-weighted mean is computed with FedAvg's
arithmetic, and the aggregate is the coordinate-wise median or the geometric median
(Weiszfeld's iteration, stopped when a step moves less than ``tol`` relative to the
estimate) of the block means. The wrapped strategy then aggregates that one robust
mean as if it were the round's only reply (carrying the round's total examples and
example-weighted metrics), so a server optimizer (FedAdam, ...) still applies. With
``blocks: 1`` the result is the wrapped strategy's own aggregate, bit for bit (tested
with FedAvg). With fewer replies than blocks, each reply is its own block (disjoint) or K = n
blocks of one reply each are drawn (without replacement).

While fewer than half the blocks hold an attacker, each coordinate of the
coordinate-wise median lies within the range of the clean blocks' means.

Client contract: the wrapped strategy's; MoM reads ``weighted_by_key`` from its replies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from numpy.typing import NDArray

from fedsim import wire
from fedsim.algorithms.fedavg.server import FedAvg as FastFedAvg
from fedsim.algorithms.fedavg.server import single_records, weighted_arrays, weighted_metrics
from fedsim.algorithms.median_of_means import MedianOfMeansParams
from fedsim.array_codec import decode, encode_record
from fedsim.strategies import register_strategy
from fedsim.strategies.wrapper import StrategyWrapper

_BLOCKS = 0x30A  # purpose tag of the block draws


def geometric_median(
    points: NDArray[np.float64], *, tol: float = 1e-7, max_iter: int = 500
) -> NDArray[np.float64]:
    """The point minimising ``Σ_i ‖points_i − z‖`` (Weiszfeld's iteration from the mean).

    Stops when a step moves less than ``tol · max(1, ‖z‖)``. A point the iterate meets
    is given a distance of ``1e-12`` rather than zero (the common safeguard).
    """
    z = points.mean(axis=0)
    for _ in range(max_iter):
        dist = np.maximum(np.linalg.norm(points - z, axis=1), 1e-12)
        weights = 1.0 / dist
        nxt = (weights[:, None] * points).sum(axis=0) / weights.sum()
        done = np.linalg.norm(nxt - z) <= tol * max(1.0, float(np.linalg.norm(z)))
        z = nxt
        if done:
            break
    return np.asarray(z, dtype=np.float64)


def _coordinate_median(means: list[dict[str, NDArray[Any]]]) -> dict[str, NDArray[Any]]:
    return {
        k: np.median(np.stack([m[k] for m in means]), axis=0).astype(means[0][k].dtype)
        for k in means[0]
    }


def _geometric_median(means: list[dict[str, NDArray[Any]]], tol: float) -> dict[str, NDArray[Any]]:
    floats = [k for k, v in means[0].items() if v.dtype.kind == "f"]
    points = np.stack(
        [np.concatenate([m[k].astype(np.float64).ravel() for k in floats]) for m in means]
    )
    z = geometric_median(points, tol=tol)
    out = _coordinate_median(means)  # non-float arrays (counters): their median
    start = 0
    for k in floats:
        size = means[0][k].size
        out[k] = z[start : start + size].reshape(means[0][k].shape).astype(means[0][k].dtype)
        start += size
    return out


Median = Callable[[list[dict[str, NDArray[Any]]], float], dict[str, NDArray[Any]]]
_MEDIANS: dict[str, Median] = {
    "coordinate": lambda means, tol: _coordinate_median(means),
    "geometric": _geometric_median,
}


@register_strategy("median-of-means")
class MedianOfMeans(StrategyWrapper):
    """Median of randomly drawn block means, around any strategy's train aggregation.

    Parameters
    ----------
    strategy : Strategy, optional
        The wrapped strategy (a scenario gives ``{name, params}``); default fedsim's
        FedAvg.
    blocks : int
        K, the number of blocks per round (>= 1).
    median : {"coordinate", "geometric"}
        Coordinate-wise median or geometric median (Weiszfeld) of the block means.
    tol : float
        Weiszfeld's relative stopping tolerance.
    blocks_sampling : {"without_replacement", "disjoint"}
        Independent equal-size blocks, each drawn without replacement (the paper's
        randomized MoM), or one permutation cut into disjoint blocks.
    seed : int, optional
        Seed of the block draws; by default drawn from numpy's global generator,
        which fedsim's ServerApp seeds with the run seed.
    """

    def __init__(
        self,
        strategy: Strategy | None = None,
        *,
        blocks: int = 5,
        median: Literal["coordinate", "geometric"] = "coordinate",
        tol: float = 1e-7,
        blocks_sampling: Literal["without_replacement", "disjoint"] = "without_replacement",
        seed: int | None = None,
    ) -> None:
        super().__init__(strategy if strategy is not None else FastFedAvg())
        MedianOfMeansParams.checked(
            blocks=blocks, median=median, tol=tol, blocks_sampling=blocks_sampling, seed=seed
        )
        self.blocks, self.median, self.tol = blocks, median, tol
        self.blocks_sampling = blocks_sampling
        self.seed = int(np.random.randint(2**31)) if seed is None else seed

    def draw_blocks(self, server_round: int, count: int) -> list[NDArray[np.int64]]:
        """Indices of the replies in each of ``min(blocks, count)`` random blocks."""
        rng = np.random.default_rng([self.seed, server_round, _BLOCKS])
        k = min(self.blocks, count)
        if self.blocks_sampling == "disjoint":
            drawn = np.array_split(rng.permutation(count), k)
        else:
            size = count // k
            drawn = [rng.choice(count, size=size, replace=False) for _ in range(k)]
        # Within a block, replies keep their order: with one block the sums run in
        # the wrapped strategy's order, which floating point needs for equal bits.
        return [np.sort(b) for b in drawn]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the robust mean of the replies with the wrapped strategy."""
        valid = [m for m in replies if not m.has_error()]
        key = getattr(self.strategy, "weighted_by_key", wire.NUM_EXAMPLES)
        parts = single_records(valid, key) if valid else None
        if parts is None:  # nothing, or replies the wrapped strategy must judge itself
            return self.strategy.aggregate_train(server_round, valid)
        weights = [float(m[key]) for _, m in parts]  # type: ignore[arg-type]
        means = []
        for block in self.draw_blocks(server_round, len(parts)):
            total = sum(weights[i] for i in block)
            factors = [weights[i] / total for i in block]
            record = weighted_arrays([parts[i][0] for i in block], factors)
            means.append({k: decode(v) for k, v in record.items()})
        robust = means[0] if len(means) == 1 else _MEDIANS[self.median](means, self.tol)
        return self.strategy.aggregate_train(
            server_round, [_as_reply(valid[0], robust, parts, weights, key)]
        )


def _as_reply(
    template: Message,
    arrays: dict[str, NDArray[Any]],
    parts: list[tuple[ArrayRecord, MetricRecord]],
    weights: list[float],
    key: str,
) -> Message:
    """One reply carrying ``arrays``, the round's total weight and its mean metrics."""
    total = sum(weights)
    metrics = weighted_metrics([m for _, m in parts], [w / total for w in weights], key)
    first = parts[0][1][key]
    metrics[key] = int(total) if isinstance(first, int) else total
    names = [n for n, r in template.content.items() if isinstance(r, ArrayRecord | MetricRecord)]
    array_name = next(n for n in names if isinstance(template.content[n], ArrayRecord))
    metric_name = next(n for n in names if isinstance(template.content[n], MetricRecord))
    content = RecordDict({array_name: encode_record(arrays), metric_name: metrics})
    reply: Message = Message(content=content, metadata=copy.copy(template.metadata))  # type: ignore[call-overload]
    return reply
