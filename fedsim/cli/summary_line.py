"""The one line ``fedsim run`` and ``fedsim deploy run`` print about a finished run.

It says what ``summary.json`` says: a final round that evaluated to NaN or not at all
is printed as such (never an older round's accuracy), best beside its round, and a
regression run (no accuracy) shows its test loss. A diverged run exits with
:data:`DIVERGED_EXIT`, so a script that checks the exit code sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.markup import escape

from fedsim.outputs.summary import DIVERGED, MISSING, NON_FINITE

DIVERGED_EXIT = 3  # the run finished, but its final model evaluates to NaN or to nothing
_WHAT = {NON_FINITE: "evaluates to NaN", MISSING: "has no evaluation"}


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def summary_line(s: Mapping[str, Any]) -> str:
    """``final accuracy 0.91 (best 0.92 at round 7), …`` for one run's summary."""
    if s.get("status") == DIVERGED:
        final = f"diverged: the final round {_WHAT.get(str(s.get('final_eval_status')), '?')}"
    elif s.get("final_eval_accuracy") is None:  # regression: the test MSE
        final = f"final loss {_number(s.get('final_eval_loss'))}"
    else:
        final = f"final accuracy {_number(s['final_eval_accuracy'])}"
    if s.get("best_eval_accuracy") is not None:
        final += f" (best {_number(s['best_eval_accuracy'])} at round {s['best_eval_round']})"
    # A run from before every engine kept the clock may have no virtual time.
    vt = s.get("virtual_time_s")
    clock = "-" if vt is None else f"{vt:.1f} s"
    eps = s.get("epsilon")  # a DP run's privacy spent, beside its accuracy
    return (
        f"{final}, virtual time {clock}, stragglers {s.get('stragglers')}, "
        f"failures {s.get('failures')}" + ("" if eps is None else f", epsilon {eps:.3f}")
    )


def diverged_runs(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One ``error:`` line (rich markup, user text escaped) per diverged run, by label."""
    return [
        f"[bold red]error:[/] {escape(label)}: the final round (round {s.get('rounds')}) "
        f"{_WHAT.get(str(s.get('final_eval_status')), '?')}: the run diverged "
        "(lower client.lr, or check the replies' failures in metrics.jsonl)"
        for label, s in summaries.items()
        if s.get("status") == DIVERGED
    ]
