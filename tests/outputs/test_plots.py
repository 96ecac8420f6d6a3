"""Figures: integer round ticks, the target line, seed counts in legends, chosen formats."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

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


def test_fourteen_variants_keep_distinct_styles_and_the_legend_stays_off_the_axes() -> None:
    """More curves than the palette's 10 colours: (colour, marker) pairs tell them apart.

    The matplotlib objects are checked, not pixels: each variant's solid line has its own
    (colour, marker) pair, the legend is the figure's and its drawn box does not overlap
    any axes' box, and the shaded band has its own legend entry naming the CI.
    """
    from matplotlib.colors import to_hex

    from fedsim.outputs.plots import PANELS, comparison_figure

    groups = {f"v{k:02d}": [_run(0.01 * k), _run(0.01 * k + 0.02)] for k in range(14)}
    fig = comparison_figure(groups, PANELS[0], "t", ("round", "virtual_time_s"))
    fig.canvas.draw()
    for ax in fig.axes:
        solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
        styles = {line.get_label(): (to_hex(line.get_color()), line.get_marker()) for line in solid}
        assert sorted(styles) == [f"v{k:02d} (n=2 seeds)" for k in range(14)]
        assert len(set(styles.values())) == 14
        assert ax.get_legend() is None  # no legend inside an axes
    (legend,) = fig.legends
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)
    texts = [t.get_text() for t in legend.get_texts()]
    assert "shaded: 95% CI of the mean over 2 seeds" in texts
    plt.close(fig)


def test_the_band_is_the_t_based_95_ci_of_the_mean() -> None:
    """Three seeds at offsets 0, 0.01, 0.02: s = 0.01, half-width t(0.975, 2)·s/√3."""
    from scipy.stats import t

    from fedsim.outputs.plots import PANELS, comparison_figure

    fig = comparison_figure({"a": [_run(0.0), _run(0.01), _run(0.02)]}, PANELS[0], "t", ("round",))
    (band,) = fig.axes[0].collections
    ys = band.get_paths()[0].vertices[:, 1]
    half = t.ppf(0.975, 2) * 0.01 / 3**0.5
    # Round 0's mean is 0.11: the band spans 0.11 ± half there.
    assert min(ys) == pytest.approx(0.11 - half) and max(ys) == pytest.approx(0.11 + 0.4 + half)
    plt.close(fig)
