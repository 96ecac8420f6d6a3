"""What ``--resume`` lets change between a checkpoint and the run that continues it.

A resumed run must end as the uninterrupted run of the same scenario would, so its
resolved scenario must be the one the checkpoint was taken under, except for the keys
of :data:`MAY_CHANGE`: more ``rounds`` (the run goes on past its old end) and keys
that only shape outputs written at the end. Anything else (a population, strategy,
seed, learning rate, ...) would mix two experiments in one run directory, so it is an
error naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedsim.errors import Problem, ScenarioError

# Keys a resumed run may change, and why that is safe (docs/scenarios.md lists them).
MAY_CHANGE: dict[str, str] = {
    "rounds": "more rounds continue the run past its old end (not fewer than it has run)",
    "output.dir": "the run directory is the one being resumed",
    "output.plots": "plots are drawn from metrics.jsonl at the end",
    "output.target_accuracy": "scored from metrics.jsonl at the end",
    "output.checkpoint_every": "when checkpoints are taken does not change the run",
    "output.plot_formats": "plots are drawn from metrics.jsonl at the end",
    "output.overwrite": "only decides what happens to a directory a new run is pointed at",
    # Callbacks run with the global RNG states put back (fedsim.server.recorder.rng_kept), and
    # see the round's record and arrays, never change them.
    "output.trackers": "trackers only copy the records (metrics.csv is rewritten whole)",
    "output.callbacks": "callbacks see the rounds and cannot change them",
    "output.baseline": "used only by a comparison of several runs",
    "engine.workers": "how many processes compute the clients never changes the results",
}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested mapping (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def check_resume(saved: Mapping[str, Any], current: Mapping[str, Any], server_round: int) -> None:
    """Refuse to resume a checkpoint of ``saved`` (after ``server_round``) as ``current``.

    Both are resolved scenarios as ``Scenario.model_dump(mode="json")`` returns them.

    Raises
    ------
    ScenarioError
        One problem per changed key outside :data:`MAY_CHANGE`, and for ``rounds``
        below the rounds the checkpoint has already run.
    """
    # Keys a later fedsim added are absent from an older checkpoint's scenario: read it
    # with today's schema, so they count as their defaults (what the old code did).
    before, after = flatten(_with_defaults(saved)), flatten(current)
    allowed = ", ".join(MAY_CHANGE)
    problems = [
        Problem(
            key,
            f"changed since the checkpoint ({_show(before, key)} -> {_show(after, key)}); "
            f"a resumed run may change only: {allowed}",
        )
        for key in sorted(before.keys() | after.keys())
        if key not in MAY_CHANGE and before.get(key, _ABSENT) != after.get(key, _ABSENT)
    ]
    rounds = after.get("rounds")
    if isinstance(rounds, int) and rounds < server_round:
        problems.append(
            Problem(
                "rounds",
                f"{rounds} is fewer than the {server_round} rounds the checkpoint has "
                f"already run; resume with rounds >= {server_round}",
            )
        )
    if problems:
        raise ScenarioError(problems)


_ABSENT = object()


def _with_defaults(saved: Mapping[str, Any]) -> Mapping[str, Any]:
    """``saved`` as today's schema reads it (new keys at their defaults), if it still reads."""
    from fedsim.config.schema import Scenario

    try:
        return Scenario.model_validate(dict(saved)).model_dump(mode="json")
    except ValueError:  # pydantic's ValidationError: compare the keys as saved
        return saved


def _show(values: Mapping[str, Any], key: str) -> str:
    value = values.get(key, _ABSENT)
    return "absent" if value is _ABSENT else repr(value)
