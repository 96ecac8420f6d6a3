"""A paper's claims checked against a comparison's per-seed results, as Markdown rows.

What docs/strategies.md's generated blocks are made of (``benchmarks/strategies_doc.py``):
a result file (``benchmarks/run_comparison.py``) holds, per variant, per-seed figures
(``final_acc``, ``final_loss``, ``final_recall_min``, ...) and its tuning table. A claim
that variant a beats b is *held* when the 95% t-interval of the mean paired difference
(paired by seed) lies above 0, or above ``−margin`` for a claim of "no worse than b by
more than margin"; a tie is *not held*, and so is a single pair (no interval).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from fedsim.outputs.comparison import ci95_half_width

PerSeed = dict[str, float | None]  # seed (as a JSON key) -> figure, None if not reported


def fmt(value: float | None, digits: int = 3) -> str:
    """``value`` to ``digits`` decimals, ``-`` for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def mean_ci(values: list[float], digits: int = 3) -> str:
    """``mean ± half-width`` of the 95% t-interval (``mean`` alone for one value)."""
    if not values:
        return "-"
    ci = ci95_half_width(values)
    return fmt(statistics.fmean(values), digits) + ("" if ci is None else f" ± {fmt(ci, digits)}")


def paired(a: PerSeed, b: PerSeed) -> list[float]:
    """Per-seed differences a - b over the seeds both have."""
    return [x - y for s, x in sorted(a.items()) if x is not None and (y := b.get(s)) is not None]


def verdict(diffs: list[float], *, at_least: float = 0.0) -> tuple[str, bool]:
    """Measured text and whether the 95% interval of the mean difference is above ``at_least``."""
    if not diffs:
        return "no paired runs", False
    mean, ci = statistics.fmean(diffs), ci95_half_width(diffs)
    held = ci is not None and mean - ci > at_least
    text = f"{mean:+.3f}" + ("" if ci is None else f" ± {ci:.3f}") + f" (n = {len(diffs)})"
    return text, held


def held_text(held: bool) -> str:
    """The verdict column's word."""
    return "held" if held else "not held"


@dataclass(frozen=True)
class Gain:
    """A paper's claim that variant ``a`` beats ``b`` on a per-seed ``metric``.

    The gain is ``a − b`` (``b − a`` when lower is better), paired by seed; the claim is
    held when its 95% interval lies above ``−margin`` (``margin`` > 0 reads "``a`` is no
    worse than ``b`` by more than ``margin``", a tolerance the claim's text must state).
    """

    text: str
    a: str
    b: str
    metric: str = "final_acc"
    lower_is_better: bool = False
    margin: float = 0.0


def gains_table(result: dict[str, Any], claims: list[Gain]) -> str:
    """Each claim, the measured gain of a over b (95% CI), and held / not held."""
    lines = ["| claim | gain of a over b (95% CI) | verdict |", "|---|---|---|"]
    variants = result["variants"]
    for c in claims:
        a, b = variants[c.a][c.metric], variants[c.b][c.metric]
        diffs = paired(b, a) if c.lower_is_better else paired(a, b)
        measured, held = verdict(diffs, at_least=-c.margin)
        lines.append(f"| {c.text} (a {c.a}, b {c.b}) | {measured} | {held_text(held)} |")
    return "\n".join(lines) + "\n"


def settings_text(settings: dict[str, Any]) -> str:
    """``lr 0.1, server_lr 1.0`` for ``{"client.optimizer.lr": 0.1, ...}``."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in settings.items())


def metric_table(result: dict[str, Any], columns: dict[str, str], digits: int = 3) -> str:
    """Variant | tuned | per column (result key → header) mean ± 95% CI | first's per seed."""
    first = next(iter(columns))
    head = " | ".join(f"{h} (mean ± 95% CI)" for h in columns.values())
    lines = [
        f"| variant | tuned | {head} | {columns[first]} per seed |",
        "|---|---|" + "---|" * (len(columns) + 1),
    ]
    for name, v in result["variants"].items():
        cells = [mean_ci([x for x in v[k].values() if x is not None], digits) for k in columns]
        per_seed = " ".join(fmt(x, digits) for x in v[first].values())
        tuned = settings_text(v.get("tuned") or {}) or "-"
        lines.append(f"| {name} | {tuned} | {' | '.join(cells)} | {per_seed} |")
    return "\n".join(lines) + "\n"


def tuning_table(result: dict[str, Any], digits: int = 3) -> str:
    """Each variant's tuning score per grid point (mean over tuning seeds; * chosen).

    A choice at the first or last point of a grid of several is flagged: the best
    setting may lie beyond the grid, so the variant may be under-tuned.
    """
    tuning = result["tuning"]
    config = tuning["config"]
    points: dict[str, list[dict[str, Any]]] = {}
    for point in tuning["points"]:
        points.setdefault(point["variant"], []).append(point)
    seeds = ", ".join(str(s) for s in config["seeds"])
    what = f"{config['select']} {config['metric']}, mean over seeds {seeds}; * chosen"
    lines = [f"| variant | tuning score ({what}) |", "|---|---|"]
    for name, grid in points.items():
        cells = [
            f"{settings_text(p['settings'])}: "
            + ("diverged" if p["diverged"] else fmt(p["mean"], digits))
            + (" *" if p["chosen"] else "")
            for p in grid
        ]
        edge = len(grid) > 1 and (grid[0]["chosen"] or grid[-1]["chosen"])
        lines.append(
            f"| {name} | {'; '.join(cells)}{' (chosen at the grid edge)' if edge else ''} |"
        )
    return "\n".join(lines) + "\n"


def comparison_table(result: dict[str, Any]) -> str:
    """Variant | tuned settings | final accuracy mean ± 95% CI | rounds to target."""
    lines = [
        "| variant | tuned | final accuracy (mean ± 95% CI) | per seed "
        "| rounds to target (mean ± sd) | never reached |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in result["variants"].items():
        finals = [x for x in v["final_acc"].values() if x is not None]
        reached = v.get("rounds_to_target", {})
        rtt = [x for x in reached.values() if x is not None]
        never = sum(x is None for x in reached.values())
        tuned = settings_text(v.get("tuned") or {})
        per_seed = " ".join(fmt(x) for x in v["final_acc"].values())
        rounds = "-" if not rtt else f"{statistics.fmean(rtt):.1f}"
        if len(rtt) > 1:
            rounds += f" ± {statistics.stdev(rtt):.1f}"
        lines.append(
            f"| {name} | {tuned or '-'} | {mean_ci(finals)} | {per_seed} | {rounds} | {never} |"
        )
    return "\n".join(lines) + "\n"


Claim = tuple[str, str, str]  # (claim, a variant, b variant): "a beats b"


def claims_table(result: dict[str, Any], claims: list[Claim]) -> str:
    """Each claim, the measured paired difference a - b, and held / not held."""
    lines = ["| claim | measured a − b (95% CI) | verdict |", "|---|---|---|"]
    variants = result["variants"]
    for text, a, b in claims:
        measured, held = verdict(paired(variants[a]["final_acc"], variants[b]["final_acc"]))
        lines.append(f"| {text} ({a} − {b}) | {measured} | {'held' if held else 'not held'} |")
    return "\n".join(lines) + "\n"
