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
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The section renderers live beside this script (the folder is not a package).
sys.path.insert(0, str(Path(__file__).parent))
import sections_accuracy_claims as accuracy
import sections_recorded_fields as recorded

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "strategies.md"
BLOCK = re.compile(
    r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S
)


SECTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "scaffold_digits": accuracy.scaffold,
    "compressed_digits": accuracy.compressed,
    "robust_suite": accuracy.robust,
    "fedcurv_digits": accuracy.fedcurv,
    "fedaws_digits": accuracy.fedaws,
    "label_skew_losses": accuracy.label_skew,
    "label_noise": accuracy.label_noise,
    "ldpc_regression": accuracy.ldpc,
    "fednova_digits": accuracy.fednova,
    "agc_digits": recorded.agc,
    "rgp_digits": recorded.rgp,
    "demlearn_digits": recorded.demlearn,
    "demlearn_mnist1d": recorded.demlearn,
    "lasgd_digits": recorded.lasgd,
    "lasgd_digits_skewed": recorded.lasgd,
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
