"""Generate docs/strategies.md's result tables and claim verdicts from committed result files.

Every table between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in
docs/strategies.md is rendered here from ``benchmarks/results/NAME.json`` (written by
``benchmarks/run_comparison.py`` or ``benchmarks/robust_suite.py``); nothing in those
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


Values = dict[str, float | None]  # seed -> a run's value
Paired = tuple[str, Values, Values, float]  # (claim, a, b, at_least): "a - b > at_least"


def paired_claims(claims: list[Paired]) -> str:
    """Each claim, the paired difference a - b, and held (95% interval above at_least)."""
    lines = ["| claim | measured a − b (95% CI) | verdict |", "|---|---|---|"]
    for text, a, b, at_least in claims:
        measured, held = verdict(paired(a, b), at_least=at_least)
        lines.append(f"| {text} | {measured} | {'held' if held else 'not held'} |")
    return "\n".join(lines) + "\n"


def _tuned(variant: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {x}" for k, x in (variant.get("tuned") or {}).items())


def _cell(values: Values) -> str:
    return mean_ci([x for x in values.values() if x is not None])


AGC_C = (0.1, 0.2, 0.5)  # the shares of agc_digits.yaml's variants


def agc(result: dict[str, Any]) -> str:
    """AGC's table and Makkonen et al.'s claims, in the paper's setting."""
    paper = "Makkonen et al. 2024"
    ignore, reweight = "ignore-stragglers", "reweight-only"
    claims = [
        (f"sharing c = {c}, d = 3 beats {b}", f"agc-c{c}-d3", b)
        for b in (reweight, ignore)
        for c in AGC_C
    ]
    claims.append((f"{reweight} beats {ignore}", reweight, ignore))
    claims = [(f"{text} ({paper})", a, b) for text, a, b in claims]
    return comparison_table(result) + "\n" + claims_table(result, claims)


def rgp(result: dict[str, Any]) -> str:
    """RGP against DP-SGD (fast clipping) at equal ε, and Yu et al.'s claims."""
    v = result["variants"]
    lines = [
        "| variant | tuned | final accuracy (mean ± 95% CI) | per seed | ε (δ = 1e-5) |",
        "|---|---|---|---|---|",
    ]
    for name, row in v.items():
        eps = sorted({e for e in row.get("final", {}).get("epsilon", {}).values() if e is not None})
        per_seed = " ".join(_fmt(x) for x in row["final_acc"].values())
        shown = ", ".join(f"{e:.2f}" for e in eps) or "— (not private)"
        lines.append(
            f"| {name} | {_tuned(row)} | {_cell(row['final_acc'])} | {per_seed} | {shown} |"
        )
    acc = {name: row["final_acc"] for name, row in v.items()}
    paper = "Yu et al. 2021"
    fast, rule = acc["dp-sgd-fast"], "held: the interval of rgp − fast above −0.01"
    claims: list[Paired] = [
        (
            f"at equal ε RGP rank {r} is as accurate as DP-SGD ({paper}; {rule})",
            acc[f"rgp-r{r}"],
            fast,
            -0.01,
        )
        for r in (4, 16)
    ]
    within = f"RGP rank 16 within 5 points of non-private ({paper}: BERT at ε = 8 within 5%)"
    claims.append((within, acc["rgp-r16"], acc["non-private"], -0.05))
    return "\n".join(lines) + "\n\n" + paired_claims(claims)


# DemLearn method -> (variant, generalisation, specialisation, worst-client field):
# "final_acc" is the root (global) model's central accuracy, the others the last
# record's own-model report (fedsim.outputs.own_models).
OWN = ("gen_accuracy_l0", "spec_accuracy_mean", "spec_accuracy_worst")
ROOT = ("final_acc", "spec_global_accuracy_mean", None)
DEMLEARN_METHODS = {
    "FedAvg (global model)": ("fedavg-ft", *ROOT),
    "FedAvg + fine-tuning": ("fedavg-ft", *OWN),
    "DemLearn (agents' models)": ("demlearn", *OWN),
    "DemLearn-P (agents' models)": ("demlearn-p", *OWN),
    "DemLearn root": ("demlearn", *ROOT),
    "DemLearn-P root": ("demlearn-p", *ROOT),
}


def demlearn(result: dict[str, Any]) -> str:
    """Generalisation and specialisation per method, and Nguyen et al.'s claims."""
    v = result["variants"]

    def field(variant: str, name: str | None) -> Values:
        row = v[variant]
        return {} if name is None else row[name] if name == "final_acc" else row["final"][name]

    lines = [
        "| method | tuned | generalisation: central test set | specialisation: each "
        "client's own data | worst client |",
        "|---|---|---|---|---|",
    ]
    for method, (variant, gen, spec, worst) in DEMLEARN_METHODS.items():
        cells = [_cell(field(variant, f)) if f else "" for f in (gen, spec, worst)]
        lines.append(f"| {method} | {_tuned(v[variant])} | " + " | ".join(cells) + " |")
    paper = "Nguyen et al. 2022"
    spec_ft = field("fedavg-ft", "spec_accuracy_mean")
    global_acc = field("fedavg-ft", "final_acc")
    claims: list[Paired] = []
    for name, variant in (("DemLearn", "demlearn"), ("DemLearn-P", "demlearn-p")):
        spec = field(variant, "spec_accuracy_mean")
        claims += [
            (f"{name} specialises better than FedAvg + fine-tuning ({paper})", spec, spec_ft, 0.0),
            (
                f"{name} specialises better than FedAvg's global model ({paper})",
                spec,
                field("fedavg-ft", "spec_global_accuracy_mean"),
                0.0,
            ),
            (
                f"{name}'s agents generalise better than FedAvg's global model ({paper})",
                field(variant, "gen_accuracy_l0"),
                global_acc,
                0.0,
            ),
            (
                f"{name}'s root generalises better than FedAvg's global model ({paper})",
                field(variant, "final_acc"),
                global_acc,
                0.0,
            ),
        ]
    return "\n".join(lines) + "\n\n" + paired_claims(claims)


LASGD_METHODS = ("lasgd", "allreduce-sgd", "local-sgd", "gossip")
LASGD_SCORES = {"averaged model": "eval_accuracy", "workers' own models": "gen_accuracy_l1"}


def time_to_target(curve: dict[str, list[Any]], metric: str, target: float) -> float | None:
    """Simulated seconds until ``metric`` first reaches ``target`` (None: never)."""
    for time_s, value in zip(curve["time_s"], curve[metric], strict=True):
        if value is not None and value >= target:
            return float(time_s)
    return None


def lasgd(result: dict[str, Any]) -> str:
    """Per device condition: final accuracy and time to target on both scorings; claims."""
    v, target = result["variants"], result["target_accuracy"]
    out = []
    for condition in ("transient", "slow"):
        lines = [
            f"**{condition}** (target {target:g})\n",
            "| variant | tuned | scored on | final accuracy (mean ± 95% CI) "
            "| time to target, s (mean ± sd) | never reached |",
            "|---|---|---|---|---|---|",
        ]
        for method in LASGD_METHODS:
            row = v[f"{method}-{condition}"]
            for label, metric in LASGD_SCORES.items():
                final = {s: c[metric][-1] for s, c in row["curves"].items()}
                times = [time_to_target(c, metric, target) for c in row["curves"].values()]
                reached = [t for t in times if t is not None]
                spread = f" ± {statistics.stdev(reached):.1f}" if len(reached) > 1 else ""
                mean_t = f"{statistics.fmean(reached):.1f}{spread}" if reached else "-"
                lines.append(
                    f"| {method} | {_tuned(row)} | {label} | {_cell(final)} | {mean_t} "
                    f"| {len(times) - len(reached)} |"
                )
        claims: list[Paired] = []
        for other in ("allreduce-sgd", "gossip"):
            for label, metric in LASGD_SCORES.items():
                a, b = (
                    {s: c[metric][-1] for s, c in v[f"{m}-{condition}"]["curves"].items()}
                    for m in ("lasgd", other)
                )
                text = f"LASGD beats {other} at equal simulated time, {label} (Avidor & Tal Israel)"
                claims.append((text, a, b, 0.0))
        out.append("\n".join(lines) + "\n\n" + paired_claims(claims))
    return "\n".join(out)


SECTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "scaffold_digits": scaffold,
    "compressed_digits": compressed,
    "robust_suite": robust,
    "agc_digits": agc,
    "rgp_digits": rgp,
    "demlearn_digits": demlearn,
    "demlearn_mnist1d": demlearn,
    "lasgd_digits": lasgd,
    "lasgd_digits_skewed": lasgd,
}


def render(name: str) -> str:
    """The generated block for ``name`` from its committed result file."""
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
