"""Flower's node sampling draws from fedsim's own generator (issue 27, item 5).

In Flower's Ray simulation other threads of the ServerApp's process draw from the
global ``random`` at moments that depend on the load; a sample drawn from it then
changed with the load (a round sampled other nodes than in-process, in about 1 of 10
Ray runs). These tests draw from the global generator between samples, as those
threads do, and need the same samples.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedsim.server.checkpoint import capture_rng, restore_rng
from fedsim.server.node_sampling import SAMPLER
from fedsim.server.session import seed_everything


class _Nodes:
    """The one grid method sampling calls."""

    def get_node_ids(self) -> Iterable[int]:
        return range(100, 120)


def _samples(rounds: int, other_draws: int) -> list[list[int]]:
    seed_everything(7)
    picked = []
    for _ in range(rounds):
        for _ in range(other_draws):  # another thread of the process
            random.random()
        picked.append(sample_nodes(_Nodes(), 4, 4)[0])  # type: ignore[arg-type]
    return picked


def test_draws_from_the_global_random_do_not_change_the_sample() -> None:
    assert _samples(5, other_draws=3) == _samples(5, other_draws=0)


def test_the_samples_are_those_the_seeded_global_random_gave() -> None:
    """Runs recorded before the sampler existed keep their samples."""
    expected = []
    random.seed(7)
    for _ in range(5):
        expected.append(random.sample(list(range(100, 120)), 4))
    assert _samples(5, other_draws=0) == expected


def test_a_checkpoint_keeps_the_sampler_and_an_older_one_still_resumes() -> None:
    seed_everything(3)
    SAMPLER.random()
    state = capture_rng()
    ahead = [SAMPLER.random() for _ in range(3)]
    restore_rng(state)
    assert [SAMPLER.random() for _ in range(3)] == ahead
    # A checkpoint from before the sampler saved only the global state, which was the
    # sampling stream then.
    older = {k: v for k, v in state.items() if k != "sampling"}
    older["python"] = state["sampling"]
    restore_rng(older)
    assert [SAMPLER.random() for _ in range(3)] == ahead
