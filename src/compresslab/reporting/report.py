"""The files a researcher reads after a compression study: a CSV of every figure, headline metrics for DVC,
plots, and a markdown report tying them together.

Input is the list of result rows, one per evaluated .tflite file, as `results.record.Record.to_row`
encodes them (the CSV and metrics.json encodings live in `results` too). A row whose `error` is set could not be evaluated: it is
listed as failed and never drawn or tabulated. Any other figure may be None (a measurement that was skipped
or failed on its own) and is then left out of plots and shown as a dash in tables.

Pure Python, pandas and matplotlib: this module must not import TensorFlow, so the report can be rebuilt
(and tested) without it. Figures are built on `matplotlib.figure.Figure` directly rather than through pyplot:
no GUI backend is ever touched (headless machines, CI) and no global figure state leaks between calls.
"""

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogFormatter

from compresslab import variants
from compresslab.errors import UserError
from compresslab.reporting.metrics import pareto_front
from compresslab.results.record import as_number, label, thread_counts, thread_key
from compresslab.results.variants_csv import variants_csv
from compresslab.outputs import atomic_path, write_text
from compresslab.reporting.formatting import DASH, KB, count, fmt, ms, one_line
from compresslab.reporting.rows import drawable, failed, sort_rows

MODE_MARKERS = {"float32": "o", "dynamic": "s", "float16": "^", "int8": "D"}
_SPARE_MARKERS = ("v", "P", "X", "*", "h", "<", ">")

DPI = 150
TRADEOFF_SIZE = (9.0, 5.5)   # inches; at DPI this gives the pixel size the tests check
PLOT_WIDTH = 9.0
BAND_COLOUR = "#9e9e9e"   # the control's interval: neutral, behind every file's colour


# ----------------------------------------------------------------------------------------------- CSV

def write_variants_csv(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Every figure of every evaluated file, one CSV row per file, numbers unrounded (`results.variants_csv`),
    written atomically: a killed stage never leaves half a file."""
    write_text(path, variants_csv(rows))
    return Path(path)


# ------------------------------------------------------------------------------------------ plots

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
        _no_data(ax, "no file has both a size and an accuracy")
        return save_figure(fig, path)
    sizes = [as_number(row["gzip_bytes"]) / KB for row in points]
    accuracy = [as_number(row["accuracy"]) * 100 for row in points]
    colours = _variant_colours(points)
    markers = mode_markers(points)
    on_front = pareto_front(list(zip(sizes, accuracy)))
    control = control_row(points)
    band = None if control is None else accuracy_interval(control)
    draw_tradeoff(ax, [TradeoffPoint(x, y, label(row), colours[row["variant"]], markers[row["mode"]], keep,
                                     accuracy_interval(row), row["variant"])
                       for row, x, y, keep in zip(points, sizes, accuracy, on_front)],
                  xlabel="gzipped size (KB, smaller is better)", title="Accuracy vs. size", band=band)
    intervals = any(accuracy_interval(row) for row in points)
    _tradeoff_legends(ax, colours, markers, interval_handles(intervals, band and label(control)))
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


def _tradeoff_legends(ax, colours: dict[str, tuple], markers: dict[str, str], extra: Sequence = ()) -> None:
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
        _no_data(ax, "no latency was measured")
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


# ----------------------------------------------------------------------------------- dvc plots data

def write_plot_data(rows: Sequence[Mapping], out_dir: str | Path) -> list[Path]:
    """The CSVs `dvc plots` draws: tradeoff.csv and latency.csv in out_dir.

    tradeoff.csv: label, variant, mode, gzip_kb, accuracy (a fraction, like metrics.json), one line per
    file with both figures. latency.csv, long format: label, threads, median_ms, one line per file and
    thread count with a median. Failed rows and missing figures are left out.

    Args:
      rows: result rows.
      out_dir: folder to write into (created).

    Returns:
      The two paths written.
    """
    out_dir = Path(out_dir)
    shown = sort_rows(drawable(rows))
    threads = thread_counts(rows)
    tradeoff = [{"label": label(row), "variant": row["variant"], "mode": row["mode"],
                 "gzip_kb": as_number(row.get("gzip_bytes")) / KB, "accuracy": as_number(row.get("accuracy"))}
                for row in shown
                if as_number(row.get("gzip_bytes")) is not None and as_number(row.get("accuracy")) is not None]
    latency = [{"label": label(row), "threads": n, "median_ms": as_number(row.get(thread_key("median_ms", n)))}
               for row in shown for n in threads
               if as_number(row.get(thread_key("median_ms", n))) is not None]
    tradeoff_columns = ["label", "variant", "mode", "gzip_kb", "accuracy"]
    return [_write_frame(tradeoff, tradeoff_columns, out_dir / "tradeoff.csv"),
            _write_frame(latency, ["label", "threads", "median_ms"], out_dir / "latency.csv")]


def write_confusion_samples(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str],
                            path: str | Path) -> Path:
    """One line per test sample with its actual and predicted class names: DVC's confusion template input.

    Args:
      y_true: int labels, indices into class_names.
      y_pred: int predictions, same length.
      class_names: class names in label order.
      path: the CSV to write (columns actual, predicted).

    Returns:
      The path written.
    """
    names = [str(name) for name in class_names]
    true, pred = _class_indices(y_true, names, "y_true"), _class_indices(y_pred, names, "y_pred")
    if len(true) != len(pred):
        raise UserError(f"y_true has {len(true)} labels but y_pred has {len(pred)}: pass the predictions for "
                        f"the same samples")
    samples = [{"actual": names[t], "predicted": names[p]} for t, p in zip(true, pred)]
    return _write_frame(samples, ["actual", "predicted"], path)


def _class_indices(values: Sequence[int], names: list[str], what: str) -> list[int]:
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise UserError(f"{what} must be a 1-D list of integer class indices, got dtype {array.dtype} and "
                        f"shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= len(names)):
        raise UserError(f"{what} holds labels outside 0..{len(names) - 1}: class_names lists {len(names)} "
                        f"classes")
    return array.tolist()


def _write_frame(records: list[dict], columns: list[str], path: Path) -> Path:
    text = pd.DataFrame(records, columns=columns).to_csv(index=False, lineterminator="\n")
    write_text(path, text)
    return Path(path)


# ------------------------------------------------------------------------------------------- report

def write_report(rows: Sequence[Mapping], confusions: Mapping[str, Mapping], out_dir: str | Path, *,
                 title: str, config_summary: Mapping, notes: Sequence[str] = (),
                 profiles: Mapping[str, Mapping] | None = None) -> Path:
    """Write out_dir/report.md with its plots in out_dir/plots/.

    Sections: the title, the configuration summary, the results table (one line per evaluated file, by
    variant then mode), the failed files with their reasons, the notes, then the plots: accuracy vs. size,
    latency, and one confusion matrix per entry of `confusions`. Nothing time-dependent is written, so an
    unchanged study reproduces the same report.

    Args:
      rows: result rows.
      confusions: {'variant-mode': {'class_names': [...], 'matrix': [[...]]}}.
      out_dir: the report folder (created).
      title: the report's heading.
      config_summary: {knob: value} worth stating (model, data, the compression settings); nested
        mappings are written as `key=value` lists.
      notes: free-text remarks, written as a bullet list.
      profiles: {'variant-mode': per-operator profile (`tflite.profile.operator_profile`)}: the baseline's
        float32 and int8 files get a time-per-operator-type table.

    Returns:
      The path of report.md.
    """
    out_dir = Path(out_dir)
    plots = _write_report_plots(rows, confusions, out_dir / "plots")
    parts = [f"# {title}", _config_section(config_summary), _results_section(rows), _delegation_section(rows),
             _profile_section(profiles or {}), _failed_section(rows),
             _notes_section(notes), _plots_section(plots)]
    path = out_dir / "report.md"
    write_text(path, "\n\n".join(part for part in parts if part) + "\n")
    return path


def results_table(rows: Sequence[Mapping]) -> str:
    """The main table as GitHub markdown with padded, aligned columns (readable as plain text too)."""
    threads = thread_counts(rows)
    fps_threads = 1 if 1 in threads else (threads[0] if threads else None)
    columns = [("variant", False), ("mode", False), ("acc % [95% CI]", True), ("Δ base pp", True),
               ("Δ ctrl pp", True), ("agree Keras %", True), ("gzip KB", True), ("×smaller", True),
               ("sparsity %", True), ("MACs", True),
               *((f"ms t{n}", True) for n in threads),
               *((f"× base t{n}", True) for n in threads if any(thread_key("ratio", n) in row for row in rows)),
               *(((f"FPS t{fps_threads}", True),) if fps_threads is not None else ()), ("peak MB", True)]
    body = [_table_cells(row, threads, fps_threads, rows) for row in sort_rows(drawable(rows))]
    return _markdown_table(columns, body)


def _table_cells(row: Mapping, threads: list[int], fps_threads: int | None,
                 all_rows: Sequence[Mapping]) -> list[str]:
    gzip_ratio = as_number(row.get("gzip_ratio"))
    cells = [str(row["variant"]), str(row["mode"]), _accuracy_cell(row),
             _change_cell(row.get("accuracy_delta_pp"), row.get("significant")),
             _change_cell(row.get("accuracy_delta_control_pp"), row.get("significant_control")),
             fmt(row.get("keras_agreement"), "{:.1f}", scale=100),
             fmt(row.get("gzip_bytes"), "{:.1f}", scale=1 / KB),
             fmt(1 / gzip_ratio if gzip_ratio else None, "{:.2f}×"),
             fmt(row.get("sparsity"), "{:.1f}", scale=100),
             count(row.get("macs")),
             *(ms(row.get(thread_key("median_ms", n))) for n in threads),
             *(_ratio_cell(row, n) for n in threads if any(thread_key("ratio", n) in r for r in all_rows))]
    if fps_threads is not None:
        cells.append(fmt(row.get(thread_key("fps", fps_threads)), "{:.1f}"))
    cells.append(fmt(row.get("peak_rss_mb"), "{:.1f}"))
    return cells


def _ratio_cell(row: Mapping, threads: int) -> str:
    """Latency against baseline-float32, timed interleaved, with the interquartile range of its rounds."""
    ratio = as_number(row.get(thread_key("ratio", threads)))
    low, high = (as_number(row.get(thread_key(f"ratio_{q}", threads))) for q in ("p25", "p75"))
    if ratio is None:
        return DASH
    spread = f" [{low:.2f}–{high:.2f}]" if low is not None and high is not None and low != high else ""
    return f"{ratio:.2f}{spread}"


def _accuracy_cell(row: Mapping) -> str:
    low, high = as_number(row.get("accuracy_ci_low")), as_number(row.get("accuracy_ci_high"))
    interval = f" [{low * 100:.1f}, {high * 100:.1f}]" if low is not None and high is not None else ""
    return fmt(row.get("accuracy"), "{:.2f}", scale=100) + interval


def _change_cell(delta, significant) -> str:
    """A change in points with its verdict: `*` significant at 0.05, `ns` not (noise, not a gain or loss)."""
    text = fmt(delta, "{:+.2f}")
    if as_number(delta) is None or significant is None:
        return text
    return f"{text} {'*' if significant else 'ns'}"


def _markdown_table(columns: list[tuple[str, bool]], body: list[list[str]]) -> str:
    cells = [[cell.replace("|", "\\|") for cell in line] for line in body]
    widths = [max(3, len(name), *(len(line[k]) for line in cells)) for k, (name, _) in enumerate(columns)]

    def line(values: Iterable[str]) -> str:
        padded = (value.rjust(width) if right else value.ljust(width)
                  for value, width, (_, right) in zip(values, widths, columns))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (width + 1) + ":") if right else ("-" * (width + 2))
                          for width, (_, right) in zip(widths, columns)) + "|"
    return "\n".join([line(name for name, _ in columns), rule, *(line(values) for values in cells)])


def _config_section(config_summary: Mapping) -> str:
    if not config_summary:
        return ""
    lines = [f"- **{key}**: {_config_value(value)}" for key, value in config_summary.items()]
    return "## Configuration\n\n" + "\n".join(lines)


def _config_value(value) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={_config_value(item)}" for key, item in value.items())
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return "[" + ", ".join(_config_value(item) for item in value) + "]"
    return str(value)


def _results_section(rows: Sequence[Mapping]) -> str:
    legend = ("acc: test accuracy with its 95 % Wilson interval; Δ base: percentage points vs. "
              "baseline-float32; Δ ctrl: vs. the float control (the baseline fine-tuned with the same budget, "
              "no compression) of the same mode, i.e. what compression alone costs; `*`: significant at 0.05 "
              "(exact McNemar test on the same test images), `ns`: not significant, read as no change; "
              "agree Keras: share of test images where the file predicts what its Keras model predicts (a "
              "conversion bug shows here); gzip KB: gzipped .tflite size; ×smaller: baseline size / this size; "
              "ms tN: median latency of one inference at N threads; × base tN: latency against baseline-float32, "
              "timed in alternating rounds in one process [interquartile range over rounds]: the figure that holds "
              "across runs and machines; FPS: 1000 / median ms; peak MB: peak memory of a process running the "
              f"file. {DASH} = not measured.")
    return f"## Results\n\n{results_table(rows)}\n\n{legend}"


def _delegation_section(rows: Sequence[Mapping]) -> str:
    """Per file, how much of it XNNPACK runs (the operators it leaves out run on LiteRT's reference kernels),
    and whether it qualifies for XNNPACK's sparse inference."""
    files = [row for row in sort_rows(drawable(rows)) if row.get("xnnpack_partitions") is not None]
    if not files:
        return ""
    columns = [("file", False), ("XNNPACK partitions", True), ("operators in XNNPACK %", True),
               ("operators outside XNNPACK", False), ("sparse inference", False)]
    body = [[label(row), str(row["xnnpack_partitions"]), fmt(row.get("xnnpack_operator_share"), "{:.0f}", 100),
             row.get("operators_outside_xnnpack") or "none", row.get("sparse_inference") or "—"] for row in files]
    eligible = sum(row.get("sparse_inference") == "eligible" for row in files)
    sparse_note = (f" {eligible} file(s) qualify for XNNPACK's sparse inference, where pruned 1x1 convolutions buy "
                   "speed; XNNPACK takes that path on ARM and on x86 CPUs without AVX, and runs them dense where "
                   "AVX makes dense faster." if eligible else
                   " No file qualifies for XNNPACK's sparse inference (a float model starting with a 3x3 stride-2 "
                   "convolution over 3 channels, 1x1 convolutions at least 2/3 zeros, global average pooling at the "
                   "end: `-S experiment=sparse_mobilenet`), so pruning buys size here, not speed.")
    return ("## Where the time goes\n\nWhich operators XNNPACK runs, read from each file's execution plan. Operators "
            "outside it run on LiteRT's reference kernels, and each boundary between partitions costs a hand-over."
            + sparse_note + "\n\n" + _markdown_table(columns, body))


PROFILED_FILES = ("baseline-float32", "baseline-int8")


def _profile_section(profiles: Mapping[str, Mapping]) -> str:
    """Time per operator type of the baseline's float32 and int8 files, side by side."""
    shown = {name: profiles[name] for name in PROFILED_FILES if "by_type" in profiles.get(name, {})}
    if not shown:
        return ""
    types = list(dict.fromkeys(entry["op"] for profile in shown.values() for entry in profile["by_type"]))
    columns = [("operator", False)]
    for name in shown:
        columns += [(f"{name} ms", True), ("%", True), ("in XNNPACK", True)]
    body = []
    for op in types:
        cells = [op]
        for profile in shown.values():
            entry = next((e for e in profile["by_type"] if e["op"] == op), None)
            cells += (["—", "—", "—"] if entry is None else
                      [f"{entry['ms']:.4f}", f"{100 * entry['share']:.0f}", f"{entry['delegated']}/{entry['count']}"])
        body.append(cells)
    totals = ["**total**"]
    for profile in shown.values():
        totals += [f"{profile['total_ms']:.4f}", "100", f"{100 * profile['delegated_share']:.0f} % of the time"]
    threads = next(iter(shown.values()))["threads"]
    return (f"### Time per operator type ({threads} thread(s))\n\nEach file cut after every operator and the cuts "
            "timed in interleaved rounds in one process: an operator's time is how much it adds to the median "
            "latency (LiteRT 2.3.0's Python API binds no per-operator profiler). Estimates: they add up to about "
            "the whole model's median. Every file's profile, per operator, is in `reports/profile.json` (an "
            "MLflow artifact).\n\n" + _markdown_table(columns, body + [totals]))


def _failed_section(rows: Sequence[Mapping]) -> str:
    broken = [row for row in rows if failed(row)]
    if not broken:
        return ""
    lines = [f"- **{label(row)}** (`{row.get('file') or '?'}`): {one_line(row['error'])}" for row in broken]
    return "## Failed\n\n" + "\n".join(lines)


def _notes_section(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    return "## Notes\n\n" + "\n".join(f"- {one_line(note)}" for note in notes)


def _plots_section(plots: list[tuple[str, str]]) -> str:
    return "## Plots\n\n" + "\n\n".join(f"### {caption}\n\n![{caption}]({link})" for caption, link in plots)


def _write_report_plots(rows: Sequence[Mapping], confusions: Mapping[str, Mapping],
                        plot_dir: Path) -> list[tuple[str, str]]:
    """Draw every plot of the report; returns (caption, link relative to report.md) pairs in order."""
    plots = [("Accuracy vs. size", plot_tradeoff(rows, plot_dir / "tradeoff.png")),
             ("Latency", plot_latency(rows, plot_dir / "latency.png"))]
    for name in _confusion_order(rows, confusions):
        file_name = "confusion_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png"
        path = plot_confusion(confusions[name], name, plot_dir / file_name)
        plots.append((f"Confusion matrix: {name}", path))
    return [(caption, f"plots/{path.name}") for caption, path in plots]


def _confusion_order(rows: Sequence[Mapping], confusions: Mapping[str, Mapping]) -> list[str]:
    ordered = [label(row) for row in sort_rows(rows) if label(row) in confusions]
    return list(dict.fromkeys(ordered)) + sorted(set(confusions) - set(ordered))


# ------------------------------------------------------------------------------------------ helpers

def _variant_colours(rows: list[Mapping]) -> dict[str, tuple]:
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


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set_axis_off()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save as PNG atomically, like every other stage output."""
    with atomic_path(path) as partial:
        fig.savefig(partial, format="png", dpi=DPI)
    return Path(path)
