"""Central evaluation: a callback, the first of a run's, that scores the global model.

Every ``output.evaluate_every`` rounds (and the last) it evaluates the round's model on
the held-out test set and writes ``eval_loss`` and ``eval_accuracy`` (the test MSE and
no accuracy for regression targets) into the round's record, with what the scenario
asks for beside them: per-class recall, per-client scores, the scores of a strategy's
own models, the model's diagnostics. The callbacks after it (the metrics log first)
see the record complete.
"""

from __future__ import annotations

import math
from typing import Any

from flwr.app import ArrayRecord

from fedsim.config.schema import Scenario
from fedsim.data.federated import FederatedData
from fedsim.errors import Problem, ScenarioError
from fedsim.evaluation import class_recall, evaluate_model, mean_squared_error, per_example_scores
from fedsim.label_prior import log_prior
from fedsim.models import build_model
from fedsim.outputs.callbacks import Callback, RunInfo
from fedsim.outputs.metrics_log import clean_record
from fedsim.outputs.own_models import ClientTests, HoldsOwnModels, score_own_models
from fedsim.outputs.per_client import (
    NO_CLIENT_TESTS,
    PER_CLIENT_FILE,
    append_rows,
    client_scores,
    summarize_clients,
)
from fedsim.outputs.summary import NON_FINITE
from fedsim.server.checkpoint import rng_kept
from fedsim.training_device import first, resolve


class CentralEvaluation(Callback):
    """Scores each evaluated round's global model on the test set, into its record.

    Parameters
    ----------
    scenario : Scenario
        The run's scenario (its ``output`` and ``client.eval_batch_size``).
    data : FederatedData
        The run's data (its test split).
    owner : HoldsOwnModels, optional
        A strategy whose own models are scored too (DemLearn's hierarchy).
    """

    draws_random = False  # it keeps the states itself, on the rounds it evaluates

    def __init__(
        self, scenario: Scenario, data: FederatedData, owner: HoldsOwnModels | None = None
    ) -> None:
        self.scenario, self.data, self.owner = scenario, data, owner
        self.client_tests: ClientTests | None = None
        self.model = build_model(
            scenario.model.name, scenario.model.params, data.input_shape, data.num_classes
        ).to(resolve(first(scenario.engine.device)))  # where the clients train
        tau = scenario.output.eval_logit_adjust
        # Post-hoc logit adjustment: predict argmax f(x) - tau * log(global prior).
        self.logit_shift = (
            None if tau is None else -tau * log_prior(data.global_label_counts, data.num_classes)
        )
        # The last evaluated round's (loss, accuracy), as computed (NaN kept).
        self.last: tuple[float | None, float | None] = (None, None)

    def evaluates(self, server_round: int) -> bool:
        """Whether ``server_round`` is evaluated (every ``evaluate_every``, and the last)."""
        every = self.scenario.output.evaluate_every
        return server_round % every == 0 or server_round == self.scenario.rounds

    def on_round_end(
        self, run: RunInfo, server_round: int, record: dict[str, Any], arrays: ArrayRecord
    ) -> None:
        """Write the round's test scores into ``record`` (nothing on other rounds)."""
        self.last = (None, None)
        if not self.evaluates(server_round):
            return
        with rng_kept():  # a model's own draws (diagnostics, say) never change the run
            self._evaluate(run, server_round, record, arrays)

    def _evaluate(
        self, run: RunInfo, server_round: int, record: dict[str, Any], arrays: ArrayRecord
    ) -> None:
        """Score ``arrays`` on the test split (and more, as the output section asks)."""
        output, data = self.scenario.output, self.data
        batch = self.scenario.client.eval_batch_size
        regression = data.y_test.dtype.kind == "f"
        self.model.load_state_dict(arrays.to_torch_state_dict())
        acc: float | None = None
        if regression:  # least squares: the test MSE, and no accuracy
            loss = mean_squared_error(self.model, data.x_test, data.y_test, batch)
        else:
            loss, acc = evaluate_model(
                self.model, data.x_test, data.y_test, batch, logit_shift=self.logit_shift
            )
        self.last = (loss, acc)
        found: dict[str, Any] = {"eval_loss": loss, "eval_accuracy": acc}
        if not all(v is None or math.isfinite(v) for v in (loss, acc)):
            # The log writes NaN as null: this says the round was evaluated, to NaN.
            found["eval_status"] = NON_FINITE
        if output.class_recall and not regression:
            recall = class_recall(
                self.model,
                data.x_test,
                data.y_test,
                data.num_classes,
                batch,
                logit_shift=self.logit_shift,
            )
            found["eval_recall"] = recall
            found["eval_recall_min"] = min((r for r in recall if r is not None), default=None)
        if output.per_client_eval:
            found.update(self._per_client(run, server_round))
        if self.owner is not None:
            found.update(self._own_models(arrays))
        diagnostics = getattr(self.model, "diagnostics", None)
        if callable(diagnostics):  # model-specific numbers (how spread out embeddings are)
            found["diagnostics"] = diagnostics()
        record.update(clean_record(found))

    def _own_models(self, arrays: ArrayRecord) -> dict[str, Any]:
        """Generalisation per level and specialisation per client (:mod:`own_models`)."""
        assert self.owner is not None
        data = self.data
        if self.client_tests is None:
            self.client_tests = ClientTests.build(
                data.y, data.parts, data.y_test, data.test_parts, data.num_classes
            )
        batch = self.scenario.client.eval_batch_size
        return score_own_models(
            self.model, self.owner, arrays, data.x_test, data.y_test, self.client_tests, batch
        )

    def _per_client(self, run: RunInfo, server_round: int) -> dict[str, Any]:
        """Score the loaded model on every client's own test split; log the rows."""
        parts = self.data.test_parts
        if parts is None:
            raise ScenarioError(
                [Problem("output.per_client_eval", "needs per-client test data " + NO_CLIENT_TESTS)]
            )
        losses, correct = per_example_scores(
            self.model, self.data.x_test, self.data.y_test, self.scenario.client.eval_batch_size
        )
        scores = client_scores(losses, correct, parts)
        append_rows(run.run_dir / PER_CLIENT_FILE, server_round, scores)
        return summarize_clients(scores)
