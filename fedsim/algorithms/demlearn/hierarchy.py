"""DemLearn's self-organised hierarchy: agglomerative clustering, group means, top-down mix.

Pure numpy/scipy, no Flower: :mod:`fedsim.strategies.demlearn` calls it with the
clients' latest models. A model is a dict of arrays (parameter name -> array).

Levels: level 0 is the agents (clients); level k (1 <= k < K) has ``groups[k-1]``
groups, cut from one dendrogram so that every level-k group is a union of level-(k-1)
groups; level K is the root, one group of everyone. ``groups=()`` is the one-level tree
(the root alone), which makes DemLearn FedAvg.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.cluster.hierarchy import cut_tree, linkage

Arrays = dict[str, np.ndarray]


def check_groups(groups: Sequence[int]) -> None:
    """Refuse group counts that do not shrink level by level.

    Raises
    ------
    ValueError
        If a count is below 2 or a level does not have fewer groups than the one below.
    """
    for k, g in enumerate(groups):
        if int(g) < 2:
            raise ValueError(f"groups[{k}] must be >= 2 (the root is implicit), got {g}")
        if k and g >= groups[k - 1]:
            raise ValueError(f"groups must decrease from the bottom level up, got {list(groups)}")


def flatten(model: Arrays) -> NDArray[np.float64]:
    """One vector of every float array of ``model``, in its key order (float64)."""
    parts = [np.asarray(v, dtype=np.float64).ravel() for v in model.values()]
    return np.concatenate(parts) if parts else np.zeros(0)


def cluster(
    vectors: NDArray[np.float64], groups: Sequence[int], method: str, metric: str
) -> list[list[int]]:
    """Cut one agglomerative dendrogram of ``vectors`` (one row per agent) at each level.

    Returns ``labels[k][i]``: the group of agent ``i`` at level ``k + 1``. A level asks
    for at most as many groups as there are agents. Group numbers are scipy's
    ``cut_tree`` labels.
    """
    n = len(vectors)
    if not groups:
        return []
    if n < 2:
        return [[0] * n for _ in groups]
    z = linkage(vectors, method=method, metric=metric)
    cut = cut_tree(z, n_clusters=[min(int(g), n) for g in groups])  # (n, levels)
    return [[int(v) for v in cut[:, k]] for k in range(len(groups))]


def weighted_mean(models: Sequence[Arrays], weights: Sequence[float]) -> Arrays:
    """``Σ (w_i / Σw) m_i``, accumulated as FedAvg's aggregation does (same order, dtype).

    Zero total weight (no member has trained yet) gives the uniform mean; members that
    all hold the same model object (the initial one) give that model itself, unrounded.
    """
    if all(m is models[0] for m in models):
        return models[0]
    total = sum(weights)
    factors = [w / total for w in weights] if total > 0 else [1.0 / len(models)] * len(models)
    out: Arrays = {}
    for model, factor in zip(models, factors, strict=True):
        for key, value in model.items():
            if key not in out:
                out[key] = value * factor
            else:
                out[key] += value * factor
    return out


@dataclass(frozen=True)
class Tree:
    """Group models of every level and each agent's path up to the root.

    Attributes
    ----------
    models : list of dict
        ``models[k - 1][g]``: the generalised model of group ``g`` at level ``k``
        (``models[-1][0]`` is the root's).
    weights : list of dict
        The same groups' weights (their members' examples).
    paths : list of list of int
        ``paths[i]``: agent ``i``'s group at levels 1..K (the root's is 0).
    """

    models: list[dict[int, Arrays]]
    weights: list[dict[int, float]]
    paths: list[list[int]]


def generalise(models: Sequence[Arrays], weights: Sequence[float], labels: list[list[int]]) -> Tree:
    """Bottom-up generalised models: each group's weighted mean of its children's models.

    A level-1 group averages its agents' models by examples; a level-k group averages its
    level-(k-1) groups' models by their total examples (the root is the last level).
    """
    n = len(models)
    levels = [*labels, [0] * n]  # the root is one group of everyone
    child_models: dict[int, Arrays] = dict(enumerate(models))
    child_weights: dict[int, float] = {i: float(w) for i, w in enumerate(weights)}
    child_of_agent = list(range(n))  # agent -> its group one level down (itself at level 0)
    out_models: list[dict[int, Arrays]] = []
    out_weights: list[dict[int, float]] = []
    for level in levels:
        members: dict[int, list[int]] = {}
        for i in range(n):  # agents in order: children enter a group in a fixed order
            children = members.setdefault(level[i], [])
            if child_of_agent[i] not in children:
                children.append(child_of_agent[i])
        group_models = {
            g: weighted_mean([child_models[c] for c in cs], [child_weights[c] for c in cs])
            for g, cs in members.items()
        }
        group_weights = {g: sum(child_weights[c] for c in cs) for g, cs in members.items()}
        out_models.append(group_models)
        out_weights.append(group_weights)
        child_models, child_weights, child_of_agent = group_models, group_weights, list(level)
    paths = [[levels[k][i] for k in range(len(levels))] for i in range(n)]
    return Tree(out_models, out_weights, paths)


def specialise(tree: Tree, agent: int, mixing: float) -> Arrays:
    """Top-down model for ``agent``: from the root, each level mixes its group's model in.

    ``s_K = G_root`` and ``s_k = (1 - β) G_k + β s_(k+1)`` down to level 1, with ``G_k``
    the agent's group at level k and β = ``mixing``; returns ``s_1`` (the root's model
    itself for a one-level tree).
    """
    path = tree.paths[agent]
    top = len(path) - 1
    s = tree.models[top][path[top]]
    for k in range(top - 1, -1, -1):
        g = tree.models[k][path[k]]
        if g is s:  # nothing to mix (every model still the initial one)
            continue
        s = {key: (1.0 - mixing) * g[key] + mixing * s[key] for key in g}
    return s


def mix(own: Arrays, pulled: Arrays, mixing: float) -> Arrays:
    """``(1 - β) own + β pulled``: DemLearn-P's start model keeps part of the agent's own."""
    return {k: (1.0 - mixing) * own[k] + mixing * pulled[k] for k in own}
