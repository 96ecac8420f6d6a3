"""Figures: integer round ticks, the target line, seed counts in legends, chosen formats."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from fedsim.outputs.plots import metric_panel, plot_client_accuracy, plot_comparison


def _run(offset: float) -> list[dict[str, float]]:
    return [
        {
            "round": r,
            "virtual_time_s": 1.3 * r,
            "eval_accuracy": 0.1 + 0.2 * r + offset,
            "eval_loss": 2.0 - 0.3 * r,
            "train_loss": None if r == 0 else 2.1 - 0.3 * r,
        }
        for r in range(3)
    ]


def test_comparison_figure_has_what_a_paper_needs(tmp_path: Path) -> None:
    groups = {"fedavg": [_run(0.0), _run(0.01), _run(0.02)], "fedprox": [_run(-0.05)]}
    # Text stays text in the SVG, so the test can read tick labels and legends.
    with plt.rc_context({"svg.fonttype": "none"}):
        paths = plot_comparison(
            groups, tmp_path, "t", x_axes=("round",), target=0.4, formats=("png", "svg")
        )
    assert sorted(p.name for p in paths) == sorted(
        f"comparison_{m}.{f}" for m in ("accuracy", "loss") for f in ("png", "svg")
    )
    accuracy = (tmp_path / "comparison_accuracy.svg").read_text()
    assert "fedavg (n=3 seeds)" in accuracy and "fedprox" in accuracy
    assert "n=1 seed" not in accuracy  # one run: no seed count
    assert "target 0.4" in accuracy
    # Integer ticks only: without them matplotlib labels 0..2 in steps of 0.25.
    assert "1.75" not in accuracy and "0.25" not in accuracy
    loss = (tmp_path / "comparison_loss.svg").read_text()
    assert "fedavg (n=3 seeds), train loss" in loss  # train loss drawn beside the test loss


def test_any_field_can_be_a_panel_and_per_client_accuracy_is_a_box_per_round(
    tmp_path: Path,
) -> None:
    runs = [[{"round": r, "bytes_up": 10, "client_accuracy_p10": 0.1 * r} for r in range(3)]]
    paths = plot_comparison(
        {"a": runs},
        tmp_path,
        "t",
        prefix="report_",
        x_axes=("cumulative_bytes_up",),
        panels=[metric_panel("client_accuracy_p10")],
    )
    assert [p.name for p in paths] == ["report_client_accuracy_p10.png"]
    per_client = tmp_path / "per_client_eval.csv"
    rows = ["round,client,num_examples,loss,accuracy"]
    rows += [f"{r},{k},5,1.0,{0.1 * k + 0.1 * r}" for r in (0, 1, 2) for k in range(4)]
    per_client.write_text("\n".join(rows) + "\n")
    assert [p.name for p in plot_client_accuracy(per_client, tmp_path, "t", ["pdf"])] == [
        "client_accuracy.pdf"
    ]
