"""``median-of-means``: K = 1 is the wrapped aggregate bit for bit; a minority of
corrupted blocks cannot move the coordinate-wise median out of the clean blocks' range;
the geometric median is the minimiser of the summed distances."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategies

import fedsim
from fedsim import wire
from fedsim.algorithms.fedavg.server import FedAvg
from fedsim.algorithms.median_of_means.server import MedianOfMeans, geometric_median
from fedsim.engine.flower_compat import set_task_identity
from fedsim.errors import ScenarioError
from fedsim.strategies import STRATEGIES

SHAPES = {"w": (4, 3), "b": (3,)}


def _reply(node: int, n: int, arrays: dict[str, np.ndarray]) -> Message:
    instruction = Message(RecordDict(), node, "train")
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: n, wire.TRAIN_LOSS: 0.1 * node}),
        }
    )
    reply = Message(content, reply_to=instruction)
    reply.metadata.__dict__["_src_node_id"] = node  # as a grid delivers it
    return reply


def _random_replies(count: int, seed: int = 0) -> list[Message]:
    rng = np.random.default_rng(seed)
    return [
        _reply(
            1000 + i,
            int(rng.integers(1, 100)),
            {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()},
        )
        for i in range(count)
    ]


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity(1)


@pytest.mark.parametrize("inner", [FedAvg, flwr_strategies.FedAvg])
@pytest.mark.parametrize("median", ["coordinate", "geometric"])
def test_one_block_is_the_inner_aggregate_bit_for_bit(inner: type, median: str) -> None:
    replies = _random_replies(13)
    ours = MedianOfMeans(inner(), blocks=1, median=median, seed=0).aggregate_train(1, replies)
    theirs = inner().aggregate_train(1, replies)
    assert ours[0] is not None and theirs[0] is not None
    for key in SHAPES:
        assert ours[0][key].data == theirs[0][key].data
    assert ours[1] == theirs[1]


def test_one_block_around_fedadam_is_fedadam() -> None:
    replies = _random_replies(6, seed=1)
    initial = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    plain, wrapped = flwr_strategies.FedAdam(), flwr_strategies.FedAdam()
    for strategy in (plain, wrapped):
        strategy.current_arrays = initial  # what configure_train would have stored
    ours = MedianOfMeans(wrapped, blocks=1, seed=0).aggregate_train(1, replies)[0]
    theirs = plain.aggregate_train(1, replies)[0]
    assert ours is not None and theirs is not None
    for key in SHAPES:
        assert ours[key].data == theirs[key].data


@pytest.mark.parametrize("median", ["coordinate", "geometric"])
def test_a_minority_of_corrupted_blocks_stays_within_the_clean_block_means(median: str) -> None:
    """15 replies in K = 5 blocks of 3; every reply of 2 blocks is an attacker's (±1e4).

    The clean block means are computed here by hand (example-weighted); the aggregate
    must lie within their range in every coordinate.
    """
    rng = np.random.default_rng(4)
    strategy = MedianOfMeans(FedAvg(), blocks=5, median=median, seed=11)
    blocks = strategy.draw_blocks(1, 15)
    corrupted = set(blocks[0]) | set(blocks[3])
    weights = rng.integers(1, 50, 15)
    values = [
        {
            k: (rng.normal(size=s) * (1e4 if i in corrupted else 1)).astype(np.float32)
            for k, s in SHAPES.items()
        }
        for i in range(15)
    ]
    replies = [_reply(1000 + i, int(weights[i]), values[i]) for i in range(15)]
    out = strategy.aggregate_train(1, replies)[0]
    assert out is not None
    clean = [b for j, b in enumerate(blocks) if j not in (0, 3)]
    for key in SHAPES:
        means = np.stack(
            [
                sum(weights[i] * values[i][key].astype(np.float64) for i in b) / weights[b].sum()
                for b in clean
            ]
        )
        got = out[key].numpy()
        assert (got >= means.min(axis=0) - 1e-5).all() and (got <= means.max(axis=0) + 1e-5).all()


def test_blocks_are_redrawn_each_round_from_the_seed() -> None:
    a = MedianOfMeans(FedAvg(), blocks=4, seed=3)
    b = MedianOfMeans(FedAvg(), blocks=4, seed=3)
    first = [list(x) for x in a.draw_blocks(1, 12)]
    assert first == [list(x) for x in b.draw_blocks(1, 12)]
    assert first != [list(x) for x in a.draw_blocks(2, 12)]
    assert sorted(itertools.chain.from_iterable(first)) == list(range(12))  # no repeats


def test_geometric_median_matches_a_brute_force_search() -> None:
    """Weiszfeld's point against the best point of a grid search (2-D, 7 points)."""
    points = np.random.default_rng(5).normal(size=(7, 2)) * [3.0, 1.0]
    points[0] = [40.0, -30.0]  # an outlier pulls the mean, barely the median

    def cost(z: np.ndarray) -> np.ndarray:
        return np.linalg.norm(points[None, :, :] - z[:, None, :], axis=2).sum(axis=1)

    z = geometric_median(points, tol=1e-10)
    best = np.zeros(2)
    for half_width in (5.0, 0.1):  # a coarse grid, then a fine one around its best point
        axis = np.linspace(-half_width, half_width, 201)
        grid = best + np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
        best = grid[np.argmin(cost(grid))]
    assert np.linalg.norm(z - best) < 0.005
    assert cost(z[None])[0] <= cost(best[None])[0] + 1e-9


def test_registered_and_validated() -> None:
    assert STRATEGIES.get("median-of-means") is MedianOfMeans
    with pytest.raises(ValueError, match="blocks"):
        MedianOfMeans(FedAvg(), blocks=0)
    with pytest.raises(ValueError, match="median"):
        MedianOfMeans(FedAvg(), median="mean")  # type: ignore[arg-type]


def test_the_inner_strategy_is_built_with_fedsims_defaults(tiny: dict[str, Any]) -> None:
    from fedsim.compose.strategy import build_strategy

    tiny["strategy"] = {"name": "median-of-means", "params": {"blocks": 2}}
    built = build_strategy(fedsim.load_scenario(tiny))
    assert isinstance(built, MedianOfMeans) and isinstance(built.strategy, FedAvg)
    assert built.strategy.fraction_evaluate == 0.0 and built.min_available_nodes == 4


@pytest.mark.parametrize(
    ("inner", "key"),
    [
        ({"name": "fedavgg"}, "strategy.params.strategy.name"),
        ({"name": "fedavg", "params": {"fraction": 1}}, "strategy.params.strategy.params.fraction"),
    ],
)
def test_inner_strategy_errors_name_their_key(
    tiny: dict[str, Any], inner: dict[str, Any], key: str
) -> None:
    tiny["strategy"] = {"name": "median-of-means", "params": {"strategy": inner}}
    with pytest.raises(ScenarioError) as info:
        fedsim.load_scenario(tiny)
    assert key in str(info.value)
