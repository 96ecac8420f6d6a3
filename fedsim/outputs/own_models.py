"""Generalisation and specialisation of strategies that keep more than one model.

A strategy that holds one model per client and models per group (DemLearn) says so by
having ``own_models()`` (:class:`HoldsOwnModels`); the ServerApp's central evaluation
then also scores, every evaluated round:

generalisation
    every level's group models on the central test set (``gen_accuracy_l<k>``: the mean
    over that level's groups; level 0 is the agents' own models, the last level the
    root, which is also ``eval_accuracy``);
specialisation
    each client's own model on that client's own test data (``spec_accuracy_mean``,
    ``_p10``, ``_worst``), and, for comparison, the global (root) model on the same
    data (``spec_global_accuracy_mean``: what FedAvg offers each client). A client's
    own test data is its natural test split where the data has one (``test_parts``);
    otherwise the central test set weighted to the client's training label mix
    (``Σ_c p_k(c) · accuracy on test class c``), the expected accuracy on fresh data
    drawn like the client's.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from flwr.app import ArrayRecord
from numpy.typing import NDArray
from torch import nn

from fedsim.evaluation import per_example_scores


@dataclass(frozen=True)
class OwnModels:
    """A strategy's models besides the global one.

    Attributes
    ----------
    levels : mapping of int to list of ArrayRecord
        Level k (1 = the groups just above the agents; the last level is the root) to
        its groups' generalised models.
    clients : mapping of int to ArrayRecord
        Partition id to that client's own model.
    """

    levels: Mapping[int, Sequence[ArrayRecord]]
    clients: Mapping[int, ArrayRecord]


@runtime_checkable
class HoldsOwnModels(Protocol):
    """A strategy whose models per level and per client are scored besides the global one."""

    def own_models(self) -> OwnModels:
        """Return the models to score (called after a round's aggregation)."""


@dataclass(frozen=True)
class ClientTests:
    """How each client's own test data is formed from the central test set.

    Attributes
    ----------
    weights : list of ndarray
        ``weights[k]``: one weight per central test example, summing to 1, for client k.
    """

    weights: list[NDArray[np.float64]]

    @classmethod
    def build(
        cls,
        y: NDArray[np.int64],
        parts: Sequence[NDArray[np.int64]],
        y_test: NDArray[np.int64],
        test_parts: Sequence[NDArray[np.int64]] | None,
        num_classes: int,
    ) -> ClientTests:
        """Natural test splits if there are any, else the label-mix weighting."""
        n_test = len(y_test)
        weights = []
        if test_parts is not None:
            for part in test_parts:
                w = np.zeros(n_test)
                w[part] = 1.0 / max(len(part), 1)
                weights.append(w)
            return cls(weights)
        test_counts = np.bincount(y_test, minlength=num_classes).astype(np.float64)
        for part in parts:
            mix = np.bincount(y[part], minlength=num_classes).astype(np.float64)
            mix[test_counts == 0] = 0.0  # a class the test set lacks cannot be scored
            mix /= max(mix.sum(), 1.0)
            per_class = np.divide(mix, test_counts, out=np.zeros_like(mix), where=test_counts > 0)
            weights.append(per_class[y_test])
        return cls(weights)

    def covers(self, client: int) -> bool:
        """Whether client ``client`` has test data to be scored on."""
        return 0 <= client < len(self.weights) and bool(self.weights[client].sum() > 0)

    def accuracy(self, client: int, correct: NDArray[np.float64]) -> float:
        """Client ``client``'s accuracy from per-example correctness on the test set."""
        return float(self.weights[client] @ correct)


def score_own_models(
    model: nn.Module,
    owner: HoldsOwnModels,
    global_arrays: ArrayRecord,
    x_test: NDArray[np.float32],
    y_test: NDArray[np.int64],
    tests: ClientTests,
    batch_size: int,
) -> dict[str, Any]:
    """The generalisation and specialisation fields of one evaluated round.

    ``model`` is a copy of the run's model (loaded here with each model in turn).
    """
    model = copy.deepcopy(model)
    models = owner.own_models()

    def correct_of(arrays: ArrayRecord) -> NDArray[np.float64]:
        model.load_state_dict(arrays.to_torch_state_dict())
        return per_example_scores(model, x_test, y_test, batch_size)[1]

    record: dict[str, Any] = {}
    clients = [k for k in sorted(models.clients) if tests.covers(k)]
    if clients:
        own = {k: correct_of(models.clients[k]) for k in clients}
        record["gen_accuracy_l0"] = float(np.mean([c.mean() for c in own.values()]))
        spec = np.array([tests.accuracy(k, own[k]) for k in clients])
        record["spec_accuracy_mean"] = float(spec.mean())
        record["spec_accuracy_p10"] = float(np.percentile(spec, 10))
        record["spec_accuracy_worst"] = float(spec.min())
        glob = correct_of(global_arrays)
        record["spec_global_accuracy_mean"] = float(
            np.mean([tests.accuracy(k, glob) for k in clients])
        )
    for level, groups in sorted(models.levels.items()):
        record[f"gen_accuracy_l{level}"] = float(np.mean([correct_of(g).mean() for g in groups]))
    return record
