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
from compresslab.reporting.plots import (DPI, TradeoffPoint, accuracy_interval, control_row, draw_tradeoff,
                                        interval_handles, mode_markers, save_figure)
from compresslab.results import selection as rule
from compresslab.results.record import label

COMPARE_SIZE = (15.0, 6.0)   # inches: two panels side by side, legends outside on the right


def plot_comparison(table: pd.DataFrame, path: str | Path) -> Path:
    """Two panels, accuracy (%) against gzipped size (KB) and against median latency (ms).

    One point per row: colour per experiment, marker per mode. Each panel's Pareto front is a step line
    (the best accuracy reachable within each budget) and its points are labelled `exp/variant-mode`
    (points at the same place share one label). A cost axis is logarithmic when it spans more than 10x.
    Each point carries its 95 % accuracy interval as an error bar: a seed group's mean its Student-t interval
    over seeds, a single run's file its Wilson interval. The float control's interval (finetune-float32, else
    baseline-float32) of the first experiment that has one is a grey band on both panels: a file inside it
    is not told apart from that control. Every run has its own control; one band keeps the plot readable,
    and the others' intervals are their error bars.

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
    control = _first_control(rows)
    band = None if control is None else accuracy_interval(control)
    _panel(size_ax, rows, "gzip_bytes", 1 / KB, "pareto_size", colours, markers,
           "gzipped size (KB, smaller is better)", "Accuracy vs. size", band)
    if rule.cost_figure(rows, "latency") == LATENCY_RATIO:
        _panel(latency_ax, rows, LATENCY_RATIO, 1.0, "pareto_latency", colours, markers,
               f"latency / its run's baseline-float32 ({at}timed interleaved; lower is better)",
               "Accuracy vs. latency", band)
    else:
        _panel(latency_ax, rows, "latency_median_ms", 1.0, "pareto_latency", colours, markers,
               f"median latency (ms {at}lower is better)", "Accuracy vs. latency", band)
    intervals = any(accuracy_interval(row) for row in rows)
    _legends(fig, colours, markers, interval_handles(intervals, band and f"{label(control)} of\n{control['experiment']}"))
    return save_figure(fig, path)


def _first_control(rows: list[dict]) -> dict | None:
    """The control row (`control_row`) of the first experiment in table order (the newest) that has one."""
    for experiment in dict.fromkeys(row["experiment"] for row in rows):
        found = control_row([row for row in rows if row["experiment"] == experiment])
        if found is not None:
            return found
    return None


def _panel(ax, rows: list[dict], cost: str, scale: float, flag: str, colours: dict, markers: dict,
           xlabel: str, title: str, band: tuple[float, float] | None) -> None:
    points = [row for row in rows if (row[cost] or 0) > 0 and row["accuracy"] is not None]
    if not points:
        ax.text(0.5, 0.5, f"no file has both {cost} and accuracy", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    draw_tradeoff(ax, [TradeoffPoint(row[cost] * scale, row["accuracy"] * 100, file_name(row),
                                     colours[row["experiment"]], markers[row["mode"]], bool(row[flag]),
                                     accuracy_interval(row), row["experiment"])
                       for row in points], xlabel=xlabel, title=title, band=band)


def _experiment_colours(rows: list[dict]) -> dict[str, tuple]:
    names = list(dict.fromkeys(row["experiment"] for row in rows))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _legends(fig: Figure, colours: dict[str, tuple], markers: dict[str, str], extra: list) -> None:
    experiments = [Line2D([], [], linestyle="", marker="o", color=colour, markeredgecolor="black", label=name)
                   for name, colour in colours.items()]
    modes = [Line2D([], [], linestyle="", marker=marker, color="lightgrey", markeredgecolor="black", label=name)
             for name, marker in markers.items()]
    front = [Line2D([], [], color="grey", linestyle="--", label="Pareto front")]
    fig.legend(handles=experiments, title="experiment", loc="outside right upper", fontsize=8, title_fontsize=9)
    fig.legend(handles=modes + front + extra, title="mode", loc="outside right lower", fontsize=8, title_fontsize=9)


