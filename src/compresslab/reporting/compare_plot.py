"""compare.png: the comparison table drawn as accuracy against size and against latency, one panel each.

Pure pandas and matplotlib, built on `Figure` directly (no pyplot state), like the report's plots.
"""

from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from compresslab.reporting.comparison_table import LATENCY_RATIO, file_name, records
from compresslab.reporting.formatting import KB
from compresslab.reporting.report import DPI, TradeoffPoint, draw_tradeoff, mode_markers, save_figure
from compresslab.results import selection as rule

COMPARE_SIZE = (15.0, 6.0)   # inches: two panels side by side, legends outside on the right


def plot_comparison(table: pd.DataFrame, path: str | Path) -> Path:
    """Two panels, accuracy (%) against gzipped size (KB) and against median latency (ms).

    One point per row: colour per experiment, marker per mode. Each panel's Pareto front is a step line
    (the best accuracy reachable within each budget) and its points are labelled `exp/variant-mode`
    (points at the same place share one label). A cost axis is logarithmic when it spans more than 10x.
    A seed group's point is its mean, with an error bar of ± one standard deviation of accuracy over seeds.

    Args:
      table: the comparison table (`build_table`).
      path: the PNG to write.

    Returns:
      The path written.
    """
    rows = records(table)
    fig = Figure(figsize=COMPARE_SIZE, dpi=DPI, layout="constrained")
    size_ax, latency_ax = fig.subplots(1, 2)
    colours = _experiment_colours(rows)
    markers = mode_markers(rows)
    threads = sorted({row["latency_threads"] for row in rows if row["latency_threads"] is not None})
    at = f"at {threads[0]} thread{'s' * (threads[0] > 1)}, " if len(threads) == 1 else ""
    _panel(size_ax, rows, "gzip_bytes", 1 / KB, "pareto_size", colours, markers,
           "gzipped size (KB, smaller is better)", "Accuracy vs. size")
    if rule.cost_figure(rows, "latency") == LATENCY_RATIO:
        _panel(latency_ax, rows, LATENCY_RATIO, 1.0, "pareto_latency", colours, markers,
               f"latency / its run's baseline-float32 ({at}timed interleaved; lower is better)",
               "Accuracy vs. latency")
    else:
        _panel(latency_ax, rows, "latency_median_ms", 1.0, "pareto_latency", colours, markers,
               f"median latency (ms {at}lower is better)", "Accuracy vs. latency")
    _legends(fig, colours, markers, spread=any(row.get("accuracy_std") is not None for row in rows))
    return save_figure(fig, path)


def _panel(ax, rows: list[dict], cost: str, scale: float, flag: str, colours: dict, markers: dict,
           xlabel: str, title: str) -> None:
    points = [row for row in rows if (row[cost] or 0) > 0 and row["accuracy"] is not None]
    if not points:
        ax.text(0.5, 0.5, f"no file has both {cost} and accuracy", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    draw_tradeoff(ax, [TradeoffPoint(row[cost] * scale, row["accuracy"] * 100, file_name(row),
                                     colours[row["experiment"]], markers[row["mode"]], bool(row[flag]),
                                     None if row.get("accuracy_std") is None else row["accuracy_std"] * 100)
                       for row in points], xlabel=xlabel, title=title)


def _experiment_colours(rows: list[dict]) -> dict[str, tuple]:
    names = list(dict.fromkeys(row["experiment"] for row in rows))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _legends(fig: Figure, colours: dict[str, tuple], markers: dict[str, str], spread: bool = False) -> None:
    experiments = [Line2D([], [], linestyle="", marker="o", color=colour, markeredgecolor="black", label=name)
                   for name, colour in colours.items()]
    modes = [Line2D([], [], linestyle="", marker=marker, color="lightgrey", markeredgecolor="black", label=name)
             for name, marker in markers.items()]
    front = [Line2D([], [], color="grey", linestyle="--", label="Pareto front")]
    if spread:
        front.append(Line2D([], [], color="grey", marker="|", markersize=12, linestyle="",
                            label="± 1 std over seeds"))
    fig.legend(handles=experiments, title="experiment", loc="outside right upper", fontsize=8, title_fontsize=9)
    fig.legend(handles=modes + front, title="mode", loc="outside right lower", fontsize=8, title_fontsize=9)


