"""The report's plots: accuracy against size (with every file's interval and the control's band), latency per
thread count, confusion matrices; and the drawing pieces `compare`'s plot shares (`draw_tradeoff`, markers,
`save_figure`).

Figures are built on `matplotlib.figure.Figure` directly rather than through pyplot: no GUI backend is ever
touched (headless machines, CI) and no global figure state leaks between calls. No TensorFlow.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogFormatter

from compresslab import variants
from compresslab.errors import UserError
from compresslab.outputs import atomic_path
from compresslab.reporting.formatting import KB, ms
from compresslab.reporting.metrics import pareto_front
from compresslab.reporting.rows import drawable, sort_rows
from compresslab.results.record import as_number, label, thread_counts, thread_key

MODE_MARKERS = {"float32": "o", "dynamic": "s", "float16": "^", "int8": "D"}
_SPARE_MARKERS = ("v", "P", "X", "*", "h", "<", ">")

DPI = 150
TRADEOFF_SIZE = (9.0, 5.5)   # inches; at DPI this gives the pixel size the tests check
PLOT_WIDTH = 9.0
BAND_COLOUR = "#9e9e9e"   # the control's interval: neutral, behind every file's colour


def plot_tradeoff(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Accuracy (%) against gzipped size (KB), with the Pareto front as a step line.

    One point per evaluated file: colour per variant, marker per mode, its 95 % interval as an error bar,
    and the float control's interval (finetune-float32, else baseline-float32) as a grey band: a file inside
    the band is not told apart from the control. The size axis is logarithmic when the sizes span more than
    10x. Points on the front (nothing both smaller and more accurate) are labelled `variant-mode`; the step
    line shows the best accuracy reachable within each size budget.

    Args:
      rows: result rows; rows without gzip_bytes or accuracy are not drawn.
      path: the PNG to write.

    Returns:
      The path written.
    """
    # A zero or missing size has no place on a (possibly log) size axis.
    points = [row for row in drawable(rows) if (as_number(row.get("gzip_bytes")) or 0) > 0 and
              as_number(row.get("accuracy")) is not None]
    fig = Figure(figsize=TRADEOFF_SIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if not points:
        no_data(ax, "no file has both a size and an accuracy")
        return save_figure(fig, path)
    sizes = [as_number(row["gzip_bytes"]) / KB for row in points]
    accuracy = [as_number(row["accuracy"]) * 100 for row in points]
    colours = variant_colours(points)
    markers = mode_markers(points)
    on_front = pareto_front(list(zip(sizes, accuracy)))
    control = control_row(points)
    band = None if control is None else accuracy_interval(control)
    draw_tradeoff(ax, [TradeoffPoint(x, y, label(row), colours[row["variant"]], markers[row["mode"]], keep,
                                     accuracy_interval(row), row["variant"])
                       for row, x, y, keep in zip(points, sizes, accuracy, on_front)],
                  xlabel="gzipped size (KB, smaller is better)", title="Accuracy vs. size", band=band)
    intervals = any(accuracy_interval(row) for row in points)
    tradeoff_legends(ax, colours, markers, interval_handles(intervals, band and label(control)))
    return save_figure(fig, path)


def control_row(rows: Sequence[Mapping]) -> Mapping | None:
    """The float file whose interval the trade-off plot shades: the control (finetune-float32), else
    baseline-float32 in a study without one; None when neither has an interval."""
    for name in (f"{variants.CONTROL}-float32", variants.BASELINE_FILE):
        found = next((row for row in rows if label(row) == name and accuracy_interval(row)), None)
        if found is not None:
            return found
    return None


def accuracy_interval(row: Mapping) -> tuple[float, float] | None:
    """A row's 95 % accuracy interval in percent: over seeds for a seed group's mean, else its Wilson interval."""
    for low, high in (("accuracy_seed_ci_low", "accuracy_seed_ci_high"), ("accuracy_ci_low", "accuracy_ci_high")):
        bounds = as_number(row.get(low)), as_number(row.get(high))
        if None not in bounds:
            return bounds[0] * 100, bounds[1] * 100
    return None


@dataclass(frozen=True)
class TradeoffPoint:
    """One file on an accuracy-against-cost plot (`draw_tradeoff`)."""

    cost: float              # in the axis' unit: KB, ms, a latency ratio
    accuracy: float          # percent
    name: str                # its label, written beside it when it is on the front
    colour: tuple
    marker: str
    on_front: bool           # nothing both cheaper and more accurate
    interval: tuple[float, float] | None = None   # its 95 % accuracy interval in percent: an error bar
    group: str = ""          # points of one group (a variant, an experiment) share one error-bar collection


def draw_tradeoff(ax, points: Sequence[TradeoffPoint], *, xlabel: str, title: str,
                  band: tuple[float, float] | None = None) -> None:
    """Accuracy (%) against a cost on `ax`, as the report's trade-off plot and `compare`'s panels draw it.

    One marker per point with its 95 % interval as a vertical error bar (one collection per group); `band`,
    the float control's interval, as a shaded horizontal strip behind them, so the reader sees how much of
    the accuracy axis is noise; the Pareto front as a step line (the best accuracy reachable within each
    budget) with its points labelled, files at the same place under one label; a logarithmic cost axis when
    the costs span more than 10x.
    """
    costs = np.array([point.cost for point in points])
    if band is not None:
        ax.axhspan(*band, color=BAND_COLOUR, alpha=0.35, linewidth=0, zorder=0)
    for point in points:
        ax.scatter(point.cost, point.accuracy, s=55, color=point.colour, marker=point.marker, edgecolors="black",
                   linewidths=0.5, zorder=3)
    groups: dict[str, list[TradeoffPoint]] = {}
    for point in points:
        if point.interval is not None:
            groups.setdefault(point.group, []).append(point)
    for members in groups.values():
        ax.errorbar([p.cost for p in members], [p.accuracy for p in members],
                    yerr=[[p.accuracy - p.interval[0] for p in members], [p.interval[1] - p.accuracy for p in members]],
                    fmt="none", ecolor=members[0].colour, elinewidth=1.0, capsize=2.5, alpha=0.8, zorder=2)
    places: dict[tuple[float, float], list[str]] = {}
    for point in sorted((p for p in points if p.on_front), key=lambda p: (p.cost, p.accuracy, p.name)):
        places.setdefault((point.cost, point.accuracy), []).append(point.name)
    if places:
        xs = [x for x, _ in places] + [costs.max()]
        ys = [y for _, y in places] + [list(places)[-1][1]]
        # 'post': past each front point its accuracy holds until a costlier file buys more.
        ax.step(xs, ys, where="post", color="grey", linestyle="--", linewidth=1.2, zorder=2)
        for (x, y), names in places.items():
            ax.annotate("\n".join(names), (x, y), xytext=(6, 6), textcoords="offset points", fontsize=7)
    if costs.max() / costs.min() > 10:
        ax.set_xscale("log")
        # Plain numbers (200, 1000), not matplotlib's 2x10^2, on the major and the labelled minor ticks.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(LogFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def interval_handles(intervals: bool, band_label: str | None) -> list:
    """Legend entries for the error bars (when some point has one) and the control's band (when drawn)."""
    handles = [Line2D([], [], color="grey", linestyle="-", linewidth=1.0, label="95 % interval")] if intervals else []
    if band_label:
        # On two lines: a one-line label widens the legend and squeezes the panels beside it.
        handles.append(Patch(facecolor=BAND_COLOUR, alpha=0.35, label=f"{band_label} 95 % interval:\ninside it, no change"))
    return handles


def tradeoff_legends(ax, colours: dict[str, tuple], markers: dict[str, str], extra: Sequence = ()) -> None:
    variant_handles = [Line2D([], [], linestyle="", marker="o", color=colour, markeredgecolor="black",
                              label=name) for name, colour in colours.items()]
    mode_handles = [Line2D([], [], linestyle="", marker=marker, color="lightgrey", markeredgecolor="black",
                           label=name) for name, marker in markers.items()]
    front_handle = [Line2D([], [], color="grey", linestyle="--", label="Pareto front")]
    variant_legend = ax.legend(handles=variant_handles, title="variant", loc="upper left", bbox_to_anchor=(1.01, 1),
                               fontsize=8, title_fontsize=9)
    ax.add_artist(variant_legend)
    ax.legend(handles=mode_handles + front_handle + list(extra), title="mode", loc="lower left",
              bbox_to_anchor=(1.01, 0), fontsize=8, title_fontsize=9)


def plot_latency(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Median latency per file and thread count as grouped horizontal bars, the interquartile range as whiskers.

    Files run top to bottom by variant then mode (VARIANT_ORDER, variants.MODES); one bar per thread count,
    labelled with its median. A missing median draws no bar, a missing quartile no whisker.

    Args:
      rows: result rows.
      path: the PNG to write.

    Returns:
      The path written.
    """
    threads = thread_counts(rows)
    files = [row for row in sort_rows(drawable(rows))
             if any(as_number(row.get(thread_key("median_ms", n))) is not None for n in threads)]
    height = max(3.0, 1.2 + 0.28 * max(1, len(files)) * max(1, len(threads)))
    fig = Figure(figsize=(PLOT_WIDTH, height), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if not files:
        no_data(ax, "no latency was measured")
        return save_figure(fig, path)
    bar = 0.8 / len(threads)
    colours = _palette(len(threads), "viridis")
    longest = 0.0
    for j, n in enumerate(threads):
        for i, row in enumerate(files):
            median = as_number(row.get(thread_key("median_ms", n)))
            if median is None:
                continue
            y = i - 0.4 + (j + 0.5) * bar
            ax.barh(y, median, height=bar * 0.9, color=colours[j], label=f"{n} thread{'s' * (n > 1)}"
                    if i == _first_with(files, n) else None)
            low, high = (as_number(row.get(thread_key(f"{q}_ms", n))) for q in ("p25", "p75"))
            end = median
            if low is not None and high is not None and low <= median <= high:
                ax.errorbar(median, y, xerr=[[median - low], [high - median]], fmt="none", ecolor="black",
                            capsize=2, linewidth=0.8)
                end = high
            ax.annotate(ms(median), (end, y), xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize=7)
            longest = max(longest, end)
    ax.set_yticks(range(len(files)), [label(row) for row in files])
    ax.invert_yaxis()
    ax.set_xlim(0, longest * 1.15)
    ax.set_xlabel("median latency per inference (ms); whiskers: interquartile range")
    ax.set_title("Latency by file and thread count")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def _first_with(files: list[Mapping], n: int) -> int:
    """Index of the first file with a median at n threads: the bar that carries the legend label."""
    return next(i for i, row in enumerate(files) if as_number(row.get(thread_key("median_ms", n))) is not None)


def plot_confusion(confusion: Mapping, title: str, path: str | Path) -> Path:
    """Confusion matrix as a heatmap with the count written in each cell.

    Args:
      confusion: {'class_names': [...], 'matrix': [[...]]}, rows = true class, columns = predicted.
      title: the figure title (e.g. 'baseline-float32').
      path: the PNG to write.

    Returns:
      The path written.
    """
    names = [str(name) for name in confusion["class_names"]]
    matrix = np.asarray(confusion["matrix"], dtype=float)
    if matrix.shape != (len(names), len(names)):
        raise UserError(f"confusion matrix for {title!r} has shape {matrix.shape} but {len(names)} class "
                        f"names: it must be square with one row and column per class")
    side = max(4.5, 1.5 + 0.6 * len(names))
    fig = Figure(figsize=(side + 1.0, side), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="samples")
    fontsize = 9 if len(names) <= 10 else 6
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, f"{count:g}", ha="center", va="center", fontsize=fontsize,
                color="white" if count > threshold else "black")
    ticks = range(len(names))
    slanted = len(names) > 3   # long names collide when written flat under more than three columns
    ax.set_xticks(ticks, names, rotation=45 if slanted else 0, ha="right" if slanted else "center",
                  fontsize=fontsize)
    ax.set_yticks(ticks, names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, path)


def variant_colours(rows: list[Mapping]) -> dict[str, tuple]:
    names = list(dict.fromkeys(row["variant"] for row in sort_rows(rows)))
    palette = _palette(len(names), "tab10" if len(names) <= 10 else "tab20")
    return dict(zip(names, palette))


def mode_markers(rows: list[Mapping]) -> dict[str, str]:
    modes = list(dict.fromkeys(row["mode"] for row in sort_rows(rows)))
    spare = iter(_SPARE_MARKERS * (len(modes) // len(_SPARE_MARKERS) + 1))
    return {mode: MODE_MARKERS.get(mode) or next(spare) for mode in modes}


def _palette(n: int, name: str) -> list[tuple]:
    cmap = colormaps[name]
    if name.startswith("tab"):
        return [cmap(i % cmap.N) for i in range(n)]
    # Continuous maps: stay off the pale end so every bar is visible on white.
    return [cmap(x) for x in np.linspace(0.15, 0.75, n)] if n > 1 else [cmap(0.35)]


def no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set_axis_off()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save as PNG atomically, like every other stage output."""
    with atomic_path(path) as partial:
        fig.savefig(partial, format="png", dpi=DPI)
    return Path(path)
