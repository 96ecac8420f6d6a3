"""FedAwS: federated averaging with spreadout, for clients that hold one class each.

Yu, Rawat, Menon, Kumar, "Federated Learning with Only Positive Labels" (ICML 2020).

Each client holds the examples of a single class (an identity) and may not see the
other classes' embeddings. Trained on positives only, every class embedding collapses to
one point. FedAwS keeps the class-embedding matrix ``W`` on the server and, after
averaging, pushes its rows apart with the spreadout regularizer
(:mod:`fedsim.algorithms.fedaws.spreadout`).

Client contract
---------------
Before a node's first round the server asks it which labels it holds (message type
``query.labels``; the reply's ``labels`` must name exactly one class). Train messages
carry the model without ``W`` plus one row, ``fedaws.row`` = ``w_y`` of the node's
class, with ``fedaws-class``, ``fedaws-positive-margin`` and ``fedaws-train-row`` in the
config. The client (``fedsim/algorithms/fedaws/client.py``) minimises the positive-only
squared hinge
``max(0, ν_pos - cos(g_θ(x), w_y))²`` and replies with θ and (when it trains the row)
its updated ``fedaws.row``. ``W`` never leaves the server.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim.algorithms.fedaws import FedAwSParams, keys
from fedsim.algorithms.fedaws.spreadout import DISTANCES, normalize_rows, spreadout_steps
from fedsim.config.schema import Scenario
from fedsim.data.federated import FederatedData
from fedsim.errors import Problem, ScenarioError
from fedsim.models.cosine import EMBEDDINGS_KEY, mean_offdiagonal_cosine
from fedsim.strategies import register_strategy


@register_strategy("fedaws")
class FedAwS(FedAvg):
    """FedAvg on θ; class rows written back and spread out on the server.

    Parameters
    ----------
    positive_margin : float
        ν_pos of the clients' positive-only hinge: a feature's cosine with its class
        row is pushed up to this value.
    margin : float, optional
        ν of the spreadout hinge. Default: the distance of two orthogonal unit rows
        (2 for ``sqeuclid``, 1 for ``cosine``).
    distance : {"sqeuclid", "cosine"}
        Distance between class rows in the regularizer.
    top_k : int, optional
        Count only each class's ``top_k`` nearest other classes (default: all).
    spread_steps : int
        Gradient steps on the regularizer after each round.
    spread_lr : float
        η of the spreadout step (Yu et al. use the clients' learning rate).
    spread_weight : float
        λ of the spreadout step; each step moves ``W`` by ``-λη ∇reg(W)``.
    train_embeddings : bool
        False freezes ``W`` at its random start (clients train θ only; nothing is
        written back): the ``frozen-w`` baseline.
    spreadout : bool
        False writes the rows back without the regularizer: the positive-only
        baseline that collapses.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(
        self,
        *,
        positive_margin: float = 0.9,
        margin: float | None = None,
        distance: str = "sqeuclid",
        top_k: int | None = None,
        spread_steps: int = 1,
        spread_lr: float = 0.1,
        spread_weight: float = 1.0,
        train_embeddings: bool = True,
        spreadout: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        FedAwSParams.checked(
            fraction_evaluate=self.fraction_evaluate,
            positive_margin=positive_margin,
            margin=margin,
            distance=distance,
            top_k=top_k,
            spread_steps=spread_steps,
            spread_lr=spread_lr,
            spread_weight=spread_weight,
            train_embeddings=train_embeddings,
            spreadout=spreadout,
        )
        self.positive_margin = positive_margin
        self.distance = distance
        self.margin = DISTANCES.get(distance).orthogonal_margin if margin is None else margin
        self.top_k = top_k
        self.spread_steps = spread_steps
        self.step_size = spread_lr * spread_weight
        self.train_embeddings = train_embeddings
        self.spreadout = spreadout
        self.node_classes: dict[int, int] = {}  # learnt from the labels query
        self._embeddings: np.ndarray | None = None  # W as sent this round

    @classmethod
    def check(cls, scenario: Scenario, params: Mapping[str, Any]) -> list[Problem]:
        """FedAwS needs the cosine model and clients holding one class each."""
        problems = []
        if scenario.model.name != "cosine" and ":" not in scenario.model.name:
            problems.append(
                Problem("model.name", "fedaws needs a class-embedding head: use model 'cosine'")
            )
        if scenario.data.partitioner.name not in ("one-class", "natural"):
            problems.append(
                Problem(
                    "data.partitioner",
                    "fedaws needs one class per client: use partitioner 'one-class' (got "
                    f"'{scenario.data.partitioner.name}')",
                )
            )
        return problems

    @classmethod
    def check_data(cls, scenario: Scenario, data: FederatedData) -> list[Problem]:
        """Each client holds one class (a natural partition may not: only its data says)."""
        for client, part in enumerate(data.parts):
            labels = sorted({int(label) for label in np.unique(data.y[part])})
            if len(labels) != 1:
                reason = (
                    f"fedaws needs one class per client (partitioner 'one-class'); client "
                    f"{client} holds labels {labels}"
                )
                return [Problem("data.partitioner", reason)]
        return []

    # ------------------------------------------------------------------- train

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send each sampled node θ and only its own class row."""
        if EMBEDDINGS_KEY not in arrays:
            raise ScenarioError(
                [Problem("model.name", "fedaws needs a class-embedding head: use model 'cosine'")]
            )
        self._embeddings = arrays[EMBEDDINGS_KEY].numpy().copy()
        theta = {k: v for k, v in arrays.items() if k != EMBEDDINGS_KEY}
        self._learn_classes(grid)
        config[keys.FEDAWS_POSITIVE_MARGIN] = self.positive_margin
        config[keys.FEDAWS_TRAIN_ROW] = self.train_embeddings
        messages = []
        for sampled in super().configure_train(server_round, ArrayRecord(), config, grid):
            node = sampled.metadata.dst_node_id
            if node not in self.node_classes:
                continue  # its labels reply was lost; asked again next round
            cls = self.node_classes[node]
            payload = ArrayRecord(dict(theta))
            payload[keys.FEDAWS_ROW] = Array(self._embeddings[cls].copy())
            node_config = ConfigRecord(dict(config.items()))
            node_config[keys.FEDAWS_CLASS] = cls
            content = RecordDict(
                {self.arrayrecord_key: payload, self.configrecord_key: node_config}
            )
            messages.append(
                Message(content, dst_node_id=node, message_type=sampled.metadata.message_type)
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average θ (FedAvg's code), write back the rows, spread out, renormalise."""
        replies = list(replies)
        rows: dict[int, list[tuple[float, np.ndarray]]] = defaultdict(list)
        for msg in replies:
            if msg.has_error() or self.arrayrecord_key not in msg.content.array_records:
                continue
            record = msg.content.array_records[self.arrayrecord_key]
            if keys.FEDAWS_ROW in record:
                cls = self.node_classes[msg.metadata.src_node_id]
                sent = next(iter(msg.content.metric_records.values()), MetricRecord())
                weight = float(sent.get(self.weighted_by_key, 1))  # type: ignore[arg-type]
                rows[cls].append((weight, record[keys.FEDAWS_ROW].numpy()))
                theta = {k: v for k, v in record.items() if k != keys.FEDAWS_ROW}
                msg.content[self.arrayrecord_key] = ArrayRecord(theta)
        arrays, aggregated = super().aggregate_train(server_round, replies)
        if arrays is None or self._embeddings is None:
            return arrays, aggregated
        w = self.update_embeddings(self._embeddings, rows)
        arrays[EMBEDDINGS_KEY] = Array(w)
        metrics = aggregated or MetricRecord()
        metrics["embedding-mean-cosine"] = mean_offdiagonal_cosine(torch.from_numpy(w))
        return arrays, metrics

    def update_embeddings(
        self, embeddings: np.ndarray, rows: dict[int, list[tuple[float, np.ndarray]]]
    ) -> np.ndarray:
        """The server's update of ``W``: write back (example-weighted) rows, spread out.

        Several clients holding the same class each return a row; their weighted mean
        replaces it. Rows of classes nobody trained this round stay as they were.
        """
        if not self.train_embeddings:
            return embeddings
        w = embeddings.astype(np.float32, copy=True)
        for cls, returned in rows.items():
            weights = np.array([n for n, _ in returned], dtype=np.float64)
            stacked = np.stack([r for _, r in returned]).astype(np.float64)
            w[cls] = (weights[:, None] * stacked).sum(0) / max(weights.sum(), 1e-12)
        if self.spreadout and self.spread_steps > 0:
            w = spreadout_steps(
                w,
                steps=self.spread_steps,
                step_size=self.step_size,
                margin=self.margin,
                distance=self.distance,
                top_k=self.top_k,
            )
        return normalize_rows(w)

    # -------------------------------------------------------------- evaluate

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: it would need ``W`` on the clients."""
        return []

    # ---------------------------------------------------------------- helpers

    def _learn_classes(self, grid: Grid) -> None:
        """Ask nodes not yet known which labels they hold (once each)."""
        unknown = [n for n in grid.get_node_ids() if n not in self.node_classes]
        if not unknown:
            return
        queries = [
            Message(RecordDict(), dst_node_id=n, message_type=f"query.{keys.QUERY_LABELS}")
            for n in unknown
        ]
        for reply in grid.send_and_receive(queries):
            if reply.has_error():
                continue
            node = reply.metadata.src_node_id
            metrics = next(iter(reply.content.metric_records.values()), MetricRecord())
            held = metrics.get(keys.LABELS, [])
            labels = list(held) if isinstance(held, list) else [held]
            if len(labels) != 1:
                raise ScenarioError(
                    [
                        Problem(
                            "data.partitioner",
                            f"fedaws needs one class per client (partitioner 'one-class'); "
                            f"node {node} holds labels {labels}",
                        )
                    ]
                )
            self.node_classes[node] = int(labels[0])
