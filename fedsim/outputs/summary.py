"""``summary.json``: the numbers a comparison needs from one run.

The final numbers are the final round's, whatever they are: a last round whose central
evaluation was NaN (``eval_status: "non-finite"`` in its record) or did not happen has
no final accuracy or loss, never an older round's, and the run's ``status`` is
``"diverged"``. ``best_eval_accuracy`` names its round beside it, so best and final
cannot be mistaken for one another.
"""

from __future__ import annotations

from typing import Any

from fedsim.outputs.metrics_log import FED_EVAL_PREFIX, TRAIN_PREFIX, Record
from fedsim.wire import EPSILON

# A round record's `eval_status` when its central evaluation was NaN or infinite (the
# log writes the NaN itself as null); the summary's `final_eval_status` adds the others.
NON_FINITE = "non-finite"
MISSING = "missing"  # the final round has no evaluation at all
EVALUATED = "ok"
COMPLETED, DIVERGED = "completed", "diverged"  # a summary's `status`


def _last_strategy_metrics(records: list[Record]) -> dict[str, Any]:
    """The ``train/`` and ``fed-eval/`` fields of the last round that has each kind."""
    out: dict[str, Any] = {}
    for prefix in (TRAIN_PREFIX, FED_EVAL_PREFIX):
        for r in reversed(records):
            # Not the strategy's average of the clients' epsilon: a mean of privacy
            # spends bounds nobody's; the summary's `epsilon` (the largest) is the one.
            fields = {k: v for k, v in r.items() if k.startswith(prefix) and k != prefix + EPSILON}
            if fields:
                out.update(fields)
                break
    return out


def _first_reaching(records: list[Record], target: float | None, key: str) -> Any:
    if target is None:
        return None
    for r in records:
        acc = r.get("eval_accuracy")
        if acc is not None and acc >= target:
            return r.get(key)
    return None


def final_eval_status(records: list[Record]) -> str:
    """``"ok"``, ``"non-finite"`` or ``"missing"``: what the final round's evaluation was.

    Every run evaluates its last round (``output.evaluate_every`` keeps it), so a last
    record without an evaluation is a run whose model could not be evaluated.
    """
    if not records:
        return MISSING
    last = records[-1]
    if last.get("eval_status") == NON_FINITE:
        return NON_FINITE
    return EVALUATED if last.get("eval_loss") is not None else MISSING


def summarize(
    records: list[Record], *, variant: str | None, seed: int, target_accuracy: float | None
) -> dict[str, Any]:
    """Condense a run's round records.

    ``rounds_to_target`` and ``virtual_time_to_target_s`` are those of the first
    evaluated round whose accuracy reaches ``target_accuracy`` (None if never).
    """
    # Evaluated rounds have a loss; regression runs (least squares) have no accuracy.
    evaluated = [r for r in records if r.get("eval_loss") is not None]
    final_status = final_eval_status(records)
    # The final round's numbers or none: an older round's are not the final ones.
    last = records[-1] if final_status == EVALUATED else {}
    best = max(
        (r for r in evaluated if r.get("eval_accuracy") is not None),
        key=lambda r: r["eval_accuracy"],
        default={},
    )

    def total(key: str) -> int:
        return int(sum(r.get(key) or 0 for r in records))

    return {
        "variant": variant,
        "seed": seed,
        "rounds": max((r["round"] for r in records), default=0),
        "status": COMPLETED if final_status == EVALUATED else DIVERGED,
        "final_eval_status": final_status,
        "final_eval_accuracy": last.get("eval_accuracy"),
        "final_eval_loss": last.get("eval_loss"),
        # output.class_recall: the worst class's recall in the last evaluated round.
        "final_eval_recall_min": last.get("eval_recall_min"),
        "best_eval_accuracy": best.get("eval_accuracy"),
        "best_eval_round": best.get("round"),
        "target_accuracy": target_accuracy,
        "rounds_to_target": _first_reaching(evaluated, target_accuracy, "round"),
        "virtual_time_to_target_s": _first_reaching(evaluated, target_accuracy, "virtual_time_s"),
        "virtual_time_s": records[-1].get("virtual_time_s") if records else None,
        "wall_time_s": records[-1].get("wall_time_s") if records else None,
        "participants": total("participants"),
        "stragglers": total("stragglers"),
        "dropouts": total("dropouts"),
        "failures": total("failures"),
        "attackers": total("attackers"),
        "bytes_up": total("bytes_up"),
        "bytes_down": total("bytes_down"),
        # Model diagnostics of the last evaluated round (e.g. embedding_mean_cosine).
        "diagnostics": last.get("diagnostics") or {},
        # What the strategy's aggregate_train / aggregate_evaluate returned last
        # (`train/<name>`, `fed-eval/<name>`; federated evaluation only if it ran).
        "strategy_metrics": _last_strategy_metrics(records),
        # DP-SGD: the largest privacy spend of any client (null without DP).
        "epsilon": max(
            (r["epsilon"] for r in records if r.get("epsilon") is not None), default=None
        ),
    }
