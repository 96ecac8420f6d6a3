"""``fedsim report``: overlay finished runs, compare them in one table, write PNG and CSV.

Any run directories can be compared (different scenarios, engines, strategies): each
is one row, labelled by its directory name. Runs whose scenarios differ only in the
seed are one variant: one curve (mean and 95% CI, the seed count in the legend) and one
row of the variants table (final accuracy as mean ± 95% CI over its seeds, from
:func:`fedsim.outputs.comparison.comparison_rows`; no interval from one seed). A
variant is labelled by the scenario keys in which the variants differ
(``lr=0.1, proximal_mu=0.5``), where at most :data:`MAX_LABEL_KEYS` do; else by its
variant (or scenario) name where those tell the variants apart, else by directory. The table's
numbers come from :func:`fedsim.outputs.summary.summarize`, the plots from
:func:`fedsim.outputs.plots.plot_comparison`, so a report agrees with each run's own
``summary.json`` and plots. :func:`differences` lists the scenario keys and the
provenance (versions, commit, host) in which the runs differ.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.errors import RunDirectoryError
from fedsim.outputs.comparison import comparison_rows, write_comparison_csv
from fedsim.outputs.metrics_log import Record, read_metrics
from fedsim.outputs.plots import PANELS, metric_panel, plot_comparison
from fedsim.outputs.provenance import read_provenance
from fedsim.outputs.summary import summarize
from fedsim.resume_rules import flatten

RESOLVED = "scenario.resolved.yaml"
# Provenance fields worth comparing (the start time and command always differ).
_PROVENANCE_KEYS = ("versions", "git", "host.hostname", "host.cpu", "host.gpus")

# x-axis choices of `fedsim report --x` -> the metrics.jsonl field they plot against.
X_AXES = {
    "round": "round",
    "virtual_time": "virtual_time_s",
    "bytes_up": "cumulative_bytes_up",
}

# What runs of one variant may differ in: the seed (pooled) and where it ran.
_POOLED = {"seed", "output.dir"}
# Names tell variants apart but say nothing of how: a label uses them only when no key does.
_NAMES = {"variant", "name"}
# More differing keys than this make a label no one reads: names are used instead.
MAX_LABEL_KEYS = 4

COLUMNS = (
    "run",
    "final_eval_accuracy",
    "best_eval_accuracy",
    "final_eval_loss",
    "rounds",
    "virtual_time_s",
    "target_accuracy",
    "rounds_to_target",
    "virtual_time_to_target_s",
)


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` produced.

    The table rows, the files written, and warnings about what it read (a log that
    ends in a partial record).
    """

    rows: list[dict[str, Any]]
    csv_path: Path
    plots: list[Path]
    warnings: list[str] = field(default_factory=list)
    # (dotted key, value in each run) for every key in which the runs differ.
    differences: list[tuple[str, list[str]]] = field(default_factory=list)
    # One comparison row per variant (runs that differ only in the seed), in run order.
    variants: list[dict[str, Any]] = field(default_factory=list)
    # report_variants.csv, written where some variant pooled several seeds.
    variants_csv: list[Path] = field(default_factory=list)


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    """Directory names, or the paths as given where two names collide."""
    names = [p.name or str(p) for p in run_dirs]
    return [
        name if names.count(name) == 1 else str(path)
        for name, path in zip(names, run_dirs, strict=True)
    ]


def runs_in(paths: Sequence[Path]) -> list[Path]:
    """Run directories, each comparison folder among ``paths`` replaced by its runs.

    A comparison folder is what ``fedsim run`` writes for variants x seeds:
    ``comparison.csv`` and one ``<variant>-seed<k>`` run directory per run.
    """
    found: list[Path] = []
    for path in paths:
        if not (path / "metrics.jsonl").is_file() and (path / "comparison.csv").is_file():
            found += sorted(d for d in path.iterdir() if (d / "metrics.jsonl").is_file())
        else:
            found.append(path)
    return found


def _records(run_dir: Path, warnings: list[str]) -> list[Record]:
    if not (run_dir / "metrics.jsonl").is_file():
        raise RunDirectoryError(f"{run_dir} is not a run directory (no metrics.jsonl)")
    # A run still going, or killed while writing, may end in a partial line: report
    # what is complete and say so.
    return read_metrics(run_dir, warnings)


def _resolved(run_dir: Path) -> dict[str, Any] | None:
    """The run's resolved scenario as a mapping (None for a directory without one)."""
    from fedsim.config.bounded_yaml import safe_load  # a file, not a scenario source

    path = run_dir / RESOLVED
    if not path.is_file():
        return None
    raw = safe_load(path.read_text(encoding="utf-8"))
    return raw if isinstance(raw, dict) else None


def _target(run_dir: Path, records: list[Record], target: float | None) -> float | None:
    """The target to score against: the one given, else the run's own scenario's."""
    if target is not None:
        return target
    resolved = _resolved(run_dir)
    if resolved is None:
        return None
    value = (resolved.get("output") or {}).get("target_accuracy")
    return float(value) if value is not None else None


def _flat(value: Any, key: str = "") -> dict[str, str]:
    """Dotted keys of a nested value, each value as text (JSON for non-strings)."""
    if isinstance(value, dict) and value:
        tree = flatten(value, f"{key}." if key else "")
    else:
        tree = {key: value}
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in tree.items()}


def _pick(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None  # type: ignore[assignment]
    return data


def run_facts(run_dir: Path) -> dict[str, str]:
    """A run's resolved scenario and provenance as flat ``key: text`` pairs."""
    facts = {
        f"scenario.{k}": v
        for k, v in _flat(_resolved(run_dir) or {}).items()
        if k != "output.dir"  # where it ran is not how it ran
    }
    provenance = read_provenance(run_dir) or {}
    for key in _PROVENANCE_KEYS:
        value = _pick(provenance, key)
        if value is not None:
            facts.update({f"provenance.{k}": v for k, v in _flat(value, key).items()})
    return facts


def differences(run_dirs: Sequence[Path]) -> list[tuple[str, list[str]]]:
    """The keys whose value is not the same in every run: ``(key, [value per run])``.

    A key a run does not have shows as ``-`` (a run from an older fedsim has no
    provenance).
    """
    facts = [run_facts(p) for p in run_dirs]
    keys = sorted({k for f in facts for k in f})
    out = []
    for key in keys:
        values = [f.get(key, "-") for f in facts]
        if len(set(values)) > 1:
            out.append((key, values))
    return out


def _config(path: Path) -> dict[str, str]:
    """A run's resolved scenario as flat text, less what runs of one variant may differ in."""
    raw = _resolved(path)
    if raw is None:  # no scenario: the run is a variant of its own
        return {"dir": str(path)}
    return {k: v for k, v in _flat(raw).items() if k not in _POOLED}


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key's shortest suffix that no other key ends in, of two parts at least.

    Two parts keep the section in sight (``strategy.name``, ``optimizer.lr``).
    """
    out = {}
    for key in keys:
        parts = key.split(".")
        for start in range(max(len(parts) - 2, 0), -1, -1):
            short = ".".join(parts[start:])
            if not any(other != key and other.endswith("." + short) for other in keys):
                break
        out[key] = short
    return out


def _key_labels(configs: Sequence[dict[str, str]]) -> list[str] | None:
    """``key=value, ...`` per config over the keys that differ (None: none, or too many).

    Names are left out; None too where two configs differ only in their names.
    """
    keys = sorted({k for c in configs for k in c} - _NAMES)
    differing = [k for k in keys if len({c.get(k, "-") for c in configs}) > 1]
    if not differing or len(differing) > MAX_LABEL_KEYS:
        return None
    short = _short_keys(differing)
    labels = [", ".join(f"{short[k]}={c.get(k, '-')}" for k in differing) for c in configs]
    return labels if len(set(labels)) == len(labels) else None


def _curve_labels(run_dirs: Sequence[Path], labels: Sequence[str]) -> list[str]:
    """One label per run for the variants: runs that differ only in the seed share it."""
    configs = [_config(p) for p in run_dirs]
    texts = [json.dumps(c, sort_keys=True) for c in configs]
    distinct = list(dict.fromkeys(texts))
    by_keys = _key_labels([configs[texts.index(t)] for t in distinct])
    if by_keys is not None:
        return [by_keys[distinct.index(t)] for t in texts]
    names = []
    for path, label in zip(run_dirs, labels, strict=True):
        raw = _resolved(path) or {}
        names.append(str(raw.get("variant") or raw.get("name") or label))
    # The names serve if runs of one configuration share a name and no two share one.
    if len(set(zip(names, texts, strict=True))) == len(distinct) == len(set(names)):
        return names
    return list(labels)


def _seed(run_dir: Path) -> int:
    """The run's seed (0 for a directory without a resolved scenario)."""
    value = (_resolved(run_dir) or {}).get("seed")
    return value if isinstance(value, int) else 0


def write_report(
    run_dirs: Sequence[Path],
    out_dir: Path,
    *,
    x: str = "round",
    target: float | None = None,
    metrics: Sequence[str] = (),
    formats: Sequence[str] = ("png",),
) -> Report:
    """Compare runs: ``report.csv`` and ``report_accuracy.png`` / ``report_loss.png``.

    Where some variant pooled several seeds, ``report_variants.csv`` holds one row per
    variant (:data:`fedsim.outputs.comparison.COLUMNS`).

    Parameters
    ----------
    run_dirs : sequence of Path
        Run directories (each with a ``metrics.jsonl``), or comparison folders (their
        runs, see :func:`runs_in`).
    out_dir : Path
        Where the CSV and plots go (created if needed).
    x : {"round", "virtual_time", "bytes_up"}
        The x axis of the plots.
    target : float, optional
        Accuracy for the "to target" columns (default: each run's
        ``output.target_accuracy``).
    metrics : sequence of str
        Record fields to plot (``report_<field>.png``); default accuracy and loss.
    formats : sequence of str
        Image formats (png, svg, pdf).
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {sorted(X_AXES)}, got '{x}'")
    run_dirs = runs_in(run_dirs)
    labels = _labels(run_dirs)
    warnings: list[str] = []
    runs = {label: _records(path, warnings) for label, path in zip(labels, run_dirs, strict=True)}
    rows = []
    targets = []
    curves = _curve_labels(run_dirs, labels)
    summaries: dict[str, list[dict[str, Any]]] = {}
    for (label, records), path, curve in zip(runs.items(), run_dirs, curves, strict=True):
        targets.append(_target(path, records, target))
        summary = summarize(records, variant=curve, seed=_seed(path), target_accuracy=targets[-1])
        rows.append({"run": label, **{c: summary[c] for c in COLUMNS[1:]}})
        summaries.setdefault(curve, []).append(summary)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "report.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    groups: dict[str, list[list[Record]]] = {}
    for curve, records in zip(curves, runs.values(), strict=True):
        groups.setdefault(curve, []).append(records)
    known = {t for t in targets if t is not None}
    plots = plot_comparison(
        groups,
        out_dir,
        f"{len(runs)} run{'s' if len(runs) != 1 else ''}",
        prefix="report_",
        x_axes=(X_AXES[x],),
        target=known.pop() if len(known) == 1 else None,  # one line only if all agree
        formats=formats,
        panels=[metric_panel(m) for m in metrics] if metrics else PANELS,
    )
    variants = comparison_rows(summaries)
    variants_csv = []
    if any(len(runs) > 1 for runs in summaries.values()):
        variants_csv.append(out_dir / "report_variants.csv")
        write_comparison_csv(variants, variants_csv[0])
    return Report(rows, csv_path, plots, warnings, differences(run_dirs), variants, variants_csv)
