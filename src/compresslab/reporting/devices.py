"""The boards' timings (stage device@<variant>, evaluate.devices) in the report and the MLflow summary: a latency
table per device beside this machine's ratios, a panel per machine of accuracy against latency ratio, and the
`<variant>.<mode>.<device>.<figure>` metrics.

Milliseconds only compare on one machine; the ratio to baseline-float32, timed on the same machine in
alternating rounds, is what compares across machines: a file can be slower than float32 here and faster on an
ARM board (XNNPACK's int8 and sparse kernels differ by CPU).
"""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from compresslab import paths
from compresslab.reporting.formatting import DASH, fmt, ms
from compresslab.reporting.markdown import markdown_table, ratio_cell
from compresslab.reporting.plots import DPI, TradeoffPoint, accuracy_interval, draw_tradeoff, mode_markers, \
    save_figure, tradeoff_legends, variant_colours
from compresslab.reporting.metrics import pareto_front
from compresslab.reporting.rows import drawable, sort_rows
from compresslab.results.record import as_number, label, thread_counts, thread_key

# The figures each file gets on the MLflow summary per device and thread count (and its peak memory).
METRIC_FIGURES = ("median_ms", "ratio", "fps")
THIS_MACHINE = "this machine"


def read_timings(variant_names: Sequence[str]) -> dict[str, dict]:
    """{device: {'host', 'threads', 'fingerprint', 'seconds', 'rows'}} over every variant's record (a variant
    without one, from before the device stage, has none)."""
    found: dict[str, dict] = {}
    for variant in variant_names:
        path = paths.device_timing(variant)
        if not path.is_file():
            continue
        for name, timing in json.loads(path.read_text())["devices"].items():
            device = found.setdefault(name, {**{k: timing[k] for k in ("host", "threads", "fingerprint")},
                                             "seconds": 0.0, "rows": []})
            device["rows"].extend(timing["rows"])
            device["seconds"] += timing["seconds"]
    return found


def device_metrics(timings: Mapping[str, dict]) -> dict[str, float]:
    """`<variant>.<mode>.<device>.<figure>_t<threads>` and `.peak_rss_mb` for every file timed on a device."""
    metrics = {}
    for name, timing in timings.items():
        for row in timing["rows"]:
            prefix = f"{row['variant']}.{row['mode']}.{name}"
            for threads in timing["threads"]:
                for figure in METRIC_FIGURES:
                    value = as_number(row.get(thread_key(figure, threads)))
                    if value is not None:
                        metrics[f"{prefix}.{figure}_t{threads}"] = value
            if as_number(row.get("peak_rss_mb")) is not None:
                metrics[f"{prefix}.peak_rss_mb"] = row["peak_rss_mb"]
    return metrics


def device_section(timings: Mapping[str, dict], rows: Sequence[Mapping]) -> str:
    """## Latency on devices: per device, what it is and a table of every file, its ratio beside this machine's."""
    if not timings:
        return ""
    here = {label(row): row for row in rows}
    parts = ["## Latency on devices",
             "Timed on each board over SSH by the device stage with this machine's schedule (tflite/timing_core.py, "
             "copied there). Milliseconds compare only on one machine; the ratio to baseline-float32, timed on "
             "the same machine in alternating rounds, compares across them."]
    for name, timing in timings.items():
        fingerprint = timing["fingerprint"]
        parts.append(f"### {name} ({timing['host']})\n\n"
                     f"{fingerprint.get('cpu')}, {fingerprint.get('cores')} cores, {fingerprint.get('machine')}, "
                     f"vector extensions: {fingerprint.get('vector_extensions')}; LiteRT "
                     f"{fingerprint.get('ai-edge-litert')}, Python {fingerprint.get('python')}; "
                     f"{len(timing['rows'])} files in {timing['seconds']:.0f} s.")
        threads = timing["threads"]
        first = threads[0]
        columns = [("file", False), *((f"ms t{n} [IQR]", True) for n in threads),
                   *((f"× base t{n}", True) for n in threads), (f"FPS t{first}", True), ("peak MB", True),
                   (f"× base t{first} {THIS_MACHINE}", True)]
        body = []
        for row in sort_rows(timing["rows"]):
            mine = here.get(label(row), {})
            body.append([label(row), *(_ms_cell(row, n) for n in threads), *(ratio_cell(row, n) for n in threads),
                         fmt(row.get(thread_key("fps", first)), "{:.1f}"), fmt(row.get("peak_rss_mb"), "{:.1f}"),
                         ratio_cell(mine, first) if mine else DASH])
        parts.append(markdown_table(columns, body))
    return "\n\n".join(parts)


def _ms_cell(row: Mapping, threads: int) -> str:
    median = as_number(row.get(thread_key("median_ms", threads)))
    low, high = (as_number(row.get(thread_key(f"{q}_ms", threads))) for q in ("p25", "p75"))
    if median is None:
        return DASH
    return ms(median) + (f" [{ms(low)}–{ms(high)}]" if low is not None and high is not None else "")


def plot_devices(rows: Sequence[Mapping], timings: Mapping[str, dict], path: str | Path) -> Path:
    """Accuracy against latency ratio to baseline-float32, one panel per machine (this one first, then each
    device at its first thread count): where the cheapest file within the accuracy differs by machine."""
    accurate = {label(row): row for row in drawable(rows) if as_number(row.get("accuracy")) is not None}
    machines = [(THIS_MACHINE, list(accurate.values()), _first_thread(rows)),
                *((name, timing["rows"], timing["threads"][0]) for name, timing in timings.items())]
    fig = Figure(figsize=(5.0 * len(machines), 5.0), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(machines), squeeze=False)[0]
    colours, markers = variant_colours(list(accurate.values())), mode_markers(list(accurate.values()))
    for ax, (name, timed, threads) in zip(axes, machines):
        pairs = [(accurate[label(row)], as_number(row.get(thread_key("ratio", threads)))) for row in timed
                 if label(row) in accurate]
        pairs = [(row, ratio) for row, ratio in pairs if ratio is not None and ratio > 0]
        if not pairs:
            ax.set_title(f"{name}: no latency ratio")
            continue
        accuracy = [as_number(row["accuracy"]) * 100 for row, _ in pairs]
        front = pareto_front([(ratio, acc) for (_, ratio), acc in zip(pairs, accuracy)])
        draw_tradeoff(ax, [TradeoffPoint(ratio, acc, label(row), colours[row["variant"]], markers[row["mode"]],
                                         keep, accuracy_interval(row), row["variant"])
                           for (row, ratio), acc, keep in zip(pairs, accuracy, front)],
                      xlabel=f"latency / baseline-float32 at {threads} thread(s) (lower is faster)", title=name)
    tradeoff_legends(axes[-1], colours, markers)
    return save_figure(fig, path)


def _first_thread(rows: Sequence[Mapping]) -> int:
    counts = thread_counts(rows)
    return counts[0] if counts else 1
