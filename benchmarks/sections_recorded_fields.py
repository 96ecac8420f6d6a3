"""docs/strategies.md sections that read fields and curves recorded per run.

AGC (shares against stragglers), RGP against DP-SGD at equal epsilon, DemLearn's
generalisation and specialisation, and LASGD's time to target on the averaged and the
workers' own models: their result files keep last-record fields (``--field``) and
per-evaluation curves (``--curve``) of ``benchmarks/run_comparison.py``, and the claims
compare those paired by seed. Imported by ``benchmarks/strategies_doc.py``.
"""

from __future__ import annotations

import statistics
from typing import Any

from fedsim.outputs.claims import (
    claims_table,
    comparison_table,
    mean_ci,
    paired,
    settings_text,
    verdict,
)
from fedsim.outputs.claims import fmt as _fmt

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
    return settings_text(variant.get("tuned") or {})


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
GLOBAL = ("final_acc", "spec_global_accuracy_mean", None)
DEMLEARN_METHODS = {
    "FedAvg (global model)": ("fedavg-ft", *GLOBAL),
    "FedAvg + fine-tuning": ("fedavg-ft", *OWN),
    "DemLearn (agents' models)": ("demlearn", *OWN),
    "DemLearn-P (agents' models)": ("demlearn-p", *OWN),
    "DemLearn root": ("demlearn", *GLOBAL),
    "DemLearn-P root": ("demlearn-p", *GLOBAL),
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
