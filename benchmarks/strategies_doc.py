"""Generate docs/strategies.md's result tables and claim verdicts from committed result files.

Every table between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in
docs/strategies.md is rendered here from ``benchmarks/results/NAME.json`` (written by
``benchmarks/run_comparison.py`` or ``benchmarks/robust_suite.py``), or, for
``params-<algorithm>``, from the algorithm's typed params model; nothing in those
blocks is typed by hand. Each paper claim is stated beside what was measured: a claim
that a beats b is *held* when the 95% t-interval of the paired difference (a - b, paired
by seed) lies above 0, *not held* otherwise (a tie counts as not held)::

    python benchmarks/strategies_doc.py          # rewrite the blocks
    python benchmarks/strategies_doc.py --check  # exit 1 if the docs differ (CI: tests/)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsim.outputs.comparison import ci95_half_width

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "strategies.md"
BLOCK = re.compile(
    r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S
)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def mean_ci(values: list[float]) -> str:
    """``mean ± half-width`` of the 95% t-interval (``mean`` alone for one value)."""
    if not values:
        return "-"
    ci = ci95_half_width(values)
    return _fmt(statistics.fmean(values)) + ("" if ci is None else f" ± {_fmt(ci)}")


def paired(a: dict[str, float | None], b: dict[str, float | None]) -> list[float]:
    """Per-seed differences a - b over the seeds both have."""
    return [a[s] - b[s] for s in sorted(a) if a[s] is not None and b.get(s) is not None]  # type: ignore[operator]


def verdict(diffs: list[float], *, at_least: float = 0.0) -> tuple[str, bool]:
    """Measured text and whether the 95% interval of the mean difference is above ``at_least``."""
    if not diffs:
        return "no paired runs", False
    mean, ci = statistics.fmean(diffs), ci95_half_width(diffs)
    held = ci is not None and mean - ci > at_least
    text = f"{mean:+.3f}" + ("" if ci is None else f" ± {ci:.3f}") + f" (n = {len(diffs)})"
    return text, held


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
        tuned = ", ".join(f"{k.rsplit('.', 1)[-1]} {x}" for k, x in (v.get("tuned") or {}).items())
        per_seed = " ".join(_fmt(x) for x in v["final_acc"].values())
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


def scaffold(result: dict[str, Any]) -> str:
    """SCAFFOLD's table and Karimireddy et al.'s claims."""
    paper = "Karimireddy et al. 2020"
    claims = [
        (f"SCAFFOLD beats FedAvg under label skew and sampling ({paper})", "scaffold", "fedavg"),
        (f"SCAFFOLD beats FedProx ({paper})", "scaffold", "fedprox"),
        (f"option I beats option II ({paper}: I is the more stable)", "scaffold-opt1", "scaffold"),
        (
            "with 20% deadline stragglers SCAFFOLD still beats FedAvg (fedsim's bookkeeping)",
            "scaffold-stragglers",
            "fedavg-stragglers",
        ),
    ]
    return comparison_table(result) + "\n" + claims_table(result, claims)


def compressed(result: dict[str, Any]) -> str:
    """Randomized rounding's table and claims (Golovin et al. 2013)."""
    paper = "Golovin et al. 2013"
    claims = [
        (f"randomized rounding beats deterministic at {b} bit(s) ({paper})", f"rr{b}", f"dr{b}")
        for b in (1, 2, 4, 8)
    ]
    claims.append(
        (f"8-bit fixed-point weights: randomized beats nearest ({paper})", "w8rr", "w8dr")
    )
    return comparison_table(result) + "\n" + claims_table(result, claims)


ROBUST_STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "mom")
ROBUST_MAX_DROP = 0.05  # the claim's tolerance, our reading of "robust"


def robust(result: dict[str, Any]) -> str:
    """Accuracy drop against the same strategy attack-free (paired by seed), per attack."""
    rows = result["variants"]
    keys = sorted(
        {k.split("-", 1)[1] for k in rows if not k.endswith("none-0")},
        key=lambda k: (k.rsplit("-", 1)[0], int(k.rsplit("-", 1)[1])),
    )
    strategies = [s for s in ROBUST_STRATEGIES if f"{s}-none-0" in rows]
    lines = [
        "| attack, % attackers | " + " | ".join(strategies) + " |",
        "|---|" + "---|" * len(strategies),
        "| none (accuracy) | "
        + " | ".join(mean_ci(list(rows[f"{s}-none-0"]["final_acc"].values())) for s in strategies)
        + " |",
    ]
    held_count = total = 0
    for key in keys:
        cells = []
        for s in strategies:
            row = rows.get(f"{s}-{key}")
            if row is None:
                cells.append("-")
                continue
            drop = row["drop_mean"]
            ci = row["drop_ci95"]
            cells.append(_fmt(drop) + ("" if ci is None else f" ± {_fmt(ci)}"))
            if s == "mom":
                total += 1
                held_count += ci is not None and drop + ci < ROBUST_MAX_DROP
        attack, percent = key.rsplit("-", 1)
        lines.append(f"| {attack}, {percent}% | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    claim = (
        "\n| claim | measured | verdict |\n|---|---|---|\n"
        "| median-of-means keeps its attack-free accuracy while fewer than half its blocks "
        f"are corrupted (Laforgue et al. 2019; our test: 95% upper bound of the drop < "
        f"{ROBUST_MAX_DROP:.2f}) | held in {held_count} of {total} attack settings | "
        f"{'held' if total and held_count == total else 'not held'} |\n"
    )
    head = (
        f"Seeds {result['seeds']}, {result['rounds']} rounds. Cells: accuracy drop against "
        "the same strategy attack-free (mean ± 95% CI, paired by seed; positive = worse).\n\n"
    )
    return head + table + claim


SECTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "scaffold_digits": scaffold,
    "compressed_digits": compressed,
    "robust_suite": robust,
}


# Blocks "params-<algorithm>": its strategy.params table, from its typed params model
# (fedsim/algorithms/<name>/__init__.py), so the docs and validation share one source.
PARAMS_PREFIX = "params-"
PARAM_SECTIONS = (
    "agc",
    "demlearn",
    "fedaws",
    "fedcurv",
    "fednova",
    "lasgd",
    "ldpc",
    "median-of-means",
    "scaffold",
)


def _default(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return f"`{json.dumps(value) if isinstance(value, list) else value}`"


def _cell(text: str) -> str:
    """Docstring text as one Markdown table cell (rst literals as code, pipes escaped)."""
    return " ".join(text.split()).replace("``", "`").replace("|", "\\|")


def params_table(algorithm: str) -> str:
    """The ``strategy.params`` table of ``algorithm``: name, type and range, default, meaning."""
    from fedsim.algorithms import ALGORITHMS, shipped_algorithms
    from fedsim.algorithms.params import FedAvgParams, expectation

    shipped_algorithms()
    model = ALGORITHMS.get(algorithm).params
    assert model is not None, f"{algorithm} has no typed params"
    flower = issubclass(model, FedAvgParams)
    rows = ["| param | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if flower and name in FedAvgParams.model_fields:
            continue
        default = field.get_default(call_default_factory=True)
        rows.append(
            f"| `{name}` | {_cell(expectation(field))} | {_default(default)} | "
            f"{_cell(field.description or '')} |"
        )
    if flower:
        rows.append(
            "| FedAvg's params | | | `fraction_train` (a number in (0, 1]), "
            "`fraction_evaluate`, `min_train_nodes`, `min_available_nodes`, ... |"
        )
    return "\n".join(rows) + "\n"


def render(name: str) -> str:
    """The generated block for ``name``: from its committed result file, or its params."""
    if name.startswith(PARAMS_PREFIX):
        return params_table(name.removeprefix(PARAMS_PREFIX))
    result = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    return SECTIONS[name](result)


def regenerated(text: str) -> str:
    """``text`` with every generated block rewritten from its result file."""

    def replace(match: re.Match[str]) -> str:
        return match.group(1) + render(match.group("name")) + match.group(4)

    return BLOCK.sub(replace, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the docs differ")
    args = parser.parse_args()
    text = DOC.read_text(encoding="utf-8")
    new = regenerated(text)
    if args.check:
        sys.exit(0 if new == text else 1)
    DOC.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
