"""``demlearn``: self-organising hierarchical learning (DemLearn; Nguyen et al. 2022).

Nguyen, Pandey, Dang, Huh, Tran, Saad, Hong, "Self-organizing democratized learning:
toward large-scale distributed learning systems" (IEEE TNNLS; arXiv 2007.03278), after
the Dem-AI philosophy of Nguyen et al. 2020. The server keeps one model per agent
(client) and, every round:

1. sends each sampled agent its own start model, pulled top-down through the tree
   (:func:`~fedsim.algorithms.demlearn.hierarchy.specialise`): ``s_K = G_root``,
   ``s_k = (1-β) G_k + β s_(k+1)`` down to the agent's level-1 group; DemLearn starts
   the agent at ``s_1``, DemLearn-P (``personalized``) at ``(1-β) w_agent + β s_1``;
2. keeps each reply as that agent's model (an agent absent from the round, not sampled
   or past the deadline, keeps its last model);
3. every ``recluster_every`` rounds (from round 1) rebuilds the hierarchy by
   agglomerative clustering (``scipy.cluster.hierarchy``) of the agents' latest models
   or latest updates;
4. aggregates generalised models bottom-up (each group the example-weighted mean of its
   children) and returns the root's as the global model (central evaluation).

The paper fixes the roles (agglomerative hierarchy, bottom-up generalisation, top-down
specialisation with a mixing weight, periodic re-clustering); the exact mixing recursion,
the schedule and the start-model rule of DemLearn-P here are fedsim's reconstruction
(docs/strategies.md). A one-level tree (``groups: []``) without personalisation is
FedAvg exactly.

Client contract: the train config carries ``local-step: demlearn``; the arrays are the
agent's start model; the reply carries the trained model and the node's partition id
as the ``demlearn-partition`` metric (:mod:`fedsim.algorithms.demlearn.client`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

import fedsim
from fedsim import wire
from fedsim.algorithms.demlearn import DemLearnParams, keys
from fedsim.algorithms.demlearn.hierarchy import (
    Arrays,
    Tree,
    cluster,
    flatten,
    generalise,
    mix,
    specialise,
)
from fedsim.algorithms.fedavg.server import FedAvg, weighted_metrics
from fedsim.array_codec import decode, encode_record
from fedsim.outputs.own_models import OwnModels


@fedsim.register_strategy("demlearn")
class DemLearn(FedAvg):
    """DemLearn and DemLearn-P: one model per agent, a self-organised tree of groups.

    Parameters
    ----------
    groups : list of int
        Groups per level between the agents and the root, from the bottom up, strictly
        decreasing, each >= 2 (``[4, 2]``: 4 groups, then 2, then the root). ``[]``:
        the root alone (FedAvg). A level never has more groups than agents.
    recluster_every : int
        Rebuild the hierarchy every this many rounds (rounds 1, 1+τ, ...), >= 1.
    linkage : str
        scipy's linkage method: single, complete, average, weighted or ward.
    metric : str
        scipy's distance between agents' vectors (``pdist``'s names); ward needs
        euclidean.
    cluster_on : {"models", "updates"}
        Cluster the agents' latest models, or their latest updates (trained minus
        received; zero before an agent first trains).
    mixing : float
        β in [0, 1]: how much of the level above each level's start model takes.
    personalized : bool
        DemLearn-P: an agent starts from ``(1-β)`` its own model ``+ β`` the pulled one.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (``fraction_train``, ...).
    """

    def __init__(
        self,
        *,
        groups: Sequence[int] = (4, 2),
        recluster_every: int = 5,
        linkage: str = "ward",
        metric: str = "euclidean",
        cluster_on: str = "models",
        mixing: float = 0.5,
        personalized: bool = False,
        **kwargs: Any,
    ) -> None:
        DemLearnParams.checked(
            groups=list(groups),
            recluster_every=recluster_every,
            linkage=linkage,
            metric=metric,
            cluster_on=cluster_on,
            mixing=mixing,
            personalized=personalized,
        )
        super().__init__(**kwargs)
        self.groups = [int(g) for g in groups]
        self.recluster_every, self.linkage, self.metric = int(recluster_every), linkage, metric
        self.cluster_on, self.mixing = cluster_on, float(mixing)
        self.personalized = bool(personalized)
        self.models: dict[int, Arrays] = {}  # node -> its latest model (aggregation order)
        self.weights: dict[int, float] = {}  # node -> its latest num-examples (0: never)
        self.updates: dict[int, Arrays] = {}  # node -> its latest update (cluster_on updates)
        self.partitions: dict[int, int] = {}  # node -> partition id (what it said)
        self.labels: list[dict[int, int]] = []  # per level 1..K-1: node -> group (none yet)
        self.sent: dict[int, Arrays] = {}  # this round's start models (cleared on aggregate)

    # ------------------------------------------------------------------ the tree
    def tree(self) -> Tree:
        """The current hierarchy's group models over every agent's latest model."""
        nodes = list(self.models)
        labels = [[level.get(n, 0) for n in nodes] for level in self.labels]
        weights = [self.weights.get(n, 0.0) for n in nodes]
        return generalise([self.models[n] for n in nodes], weights, labels)

    def start_model(self, node: int, tree: Tree) -> Arrays:
        """The model ``node`` starts its next local training from (top-down)."""
        pulled = specialise(tree, list(self.models).index(node), self.mixing)
        if self.personalized:
            pulled = mix(self.models[node], pulled, self.mixing)
        return _like(pulled, self.models[node])

    def _recluster(self) -> None:
        nodes = list(self.models)
        source = self.updates if self.cluster_on == "updates" else self.models
        vectors = np.stack(
            [
                flatten(source[n]) if n in source else np.zeros_like(flatten(self.models[n]))
                for n in nodes
            ]
        )
        labels = cluster(vectors, self.groups, self.linkage, self.metric)
        self.labels = [dict(zip(nodes, level, strict=True)) for level in labels]

    # ------------------------------------------------------------------ Flower hooks
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send every sampled agent its own start model (agents new to the run: ``arrays``)."""
        new = [n for n in sorted(grid.get_node_ids()) if n not in self.models]
        if new:  # one shared (never mutated) object: the tree's means keep it unrounded
            received = {k: decode(v) for k, v in arrays.items()}
            self.models.update(dict.fromkeys(new, received))
        config[wire.LOCAL_STEP] = keys.STEP
        messages = list(super().configure_train(server_round, arrays, config, grid))
        tree = self.tree()
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            start = self.start_model(node, tree)
            self.sent[node] = start
            content = RecordDict({self.arrayrecord_key: encode_record(start), wire.CONFIG: config})
            out.append(Message(content, node, msg.metadata.message_type))
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Keep each reply as its agent's model; recluster when due; return the root's."""
        valid, _ = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        sent, self.sent = self.sent, {}
        replied: dict[int, Arrays] = {}
        metrics: list[MetricRecord] = []
        for msg in valid:
            if (
                self.arrayrecord_key not in msg.content.array_records
                or wire.METRICS not in msg.content.metric_records
            ):
                continue  # not a model reply (the engine's checks let nothing else through)
            node = msg.metadata.src_node_id
            record = msg.content.array_records[self.arrayrecord_key]
            replied[node] = {k: decode(v) for k, v in record.items()}
            reply_metrics = msg.content.metric_records[wire.METRICS]
            self.weights[node] = float(reply_metrics[self.weighted_by_key])  # type: ignore[arg-type]
            if keys.PARTITION in reply_metrics:
                self.partitions[node] = int(reply_metrics[keys.PARTITION])  # type: ignore[arg-type]
            if node in sent:
                self.updates[node] = {k: v - sent[node][k] for k, v in replied[node].items()}
            metrics.append(
                MetricRecord({k: v for k, v in reply_metrics.items() if k != keys.PARTITION})
            )
        if not metrics:
            return None, None
        # Aggregation order: this round's replies as they came (as FedAvg sums them), then
        # the absent agents, who keep their models.
        self.models = replied | {n: m for n, m in self.models.items() if n not in replied}
        if (server_round - 1) % self.recluster_every == 0:
            self._recluster()
        root = self.tree().models[-1][0]
        weights = [float(m[self.weighted_by_key]) for m in metrics]  # type: ignore[arg-type]
        total = sum(weights)
        factors = [w / total for w in weights]
        summary = weighted_metrics(metrics, factors, self.weighted_by_key)
        for k, level in enumerate(self.labels, start=1):
            summary[f"demlearn-groups-l{k}"] = len(set(level.values()))
        return encode_record(_like(root, next(iter(self.models.values())))), summary

    # ------------------------------------------------------------------ evaluation
    def own_models(self) -> OwnModels:
        """Each level's generalised models and each agent's own (specialised) model."""
        if not self.models:  # before round 1
            return OwnModels(levels={}, clients={})
        tree = self.tree()
        levels = {
            k: [encode_record(m) for m in group.values()] for k, group in enumerate(tree.models, 1)
        }
        clients = {
            self.partitions[n]: encode_record(m)
            for n, m in self.models.items()
            if n in self.partitions
        }
        return OwnModels(levels=levels, clients=clients)


def _like(model: Arrays, reference: Arrays) -> Arrays:
    """``model`` in ``reference``'s dtypes, contiguous (what clients load)."""
    return {k: np.ascontiguousarray(v, dtype=reference[k].dtype) for k, v in model.items()}
