"""The files a researcher reads after a compression study: report.md with its plots. The pieces live by concept:
`reporting.markdown` (report.md's text), `reporting.plots` (the figures), `reporting.data_files` (variants.csv and
the `dvc plots` CSVs); this module draws the plots and writes report.md that links them.

Input is the list of result rows, one per evaluated .tflite file, as `results.record.Record.to_row` encodes them
(the CSV and metrics.json encodings live in `results` too). A row whose `error` is set could not be evaluated: it
is listed as failed and never drawn or tabulated. Any other figure may be None (a measurement that was skipped or
failed on its own) and is then left out of plots and shown as a dash in tables.

Pure Python, pandas and matplotlib: this module must not import TensorFlow, so the report can be rebuilt (and
tested) without it.
"""

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from compresslab.outputs import write_text
from compresslab.reporting.devices import device_section, plot_devices
from compresslab.reporting.markdown import report_markdown
from compresslab.reporting.plots import plot_confusion, plot_latency, plot_tradeoff
from compresslab.reporting.rows import sort_rows
from compresslab.results.record import label


def write_report(rows: Sequence[Mapping], confusions: Mapping[str, Mapping], out_dir: str | Path, *,
                 title: str, config_summary: Mapping, notes: Sequence[str] = (),
                 profiles: Mapping[str, Mapping] | None = None, allocations: Mapping[str, Mapping] | None = None,
                 tensor_errors: Mapping[str, list] | None = None,
                 device_timings: Mapping[str, dict] | None = None) -> Path:
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
      allocations: {'variant-mixed': the per-layer allocation behind a mixed file (`tflite.allocation.allocate`)}.
      tensor_errors: {'variant-mode': per-tensor errors against the float32 file (`tflite.tensor_error.compare`)}.
      device_timings: {device: its timings (`reporting.devices.read_timings`)}: a table per device and a panel
        per machine of accuracy against latency ratio.

    Returns:
      The path of report.md.
    """
    out_dir = Path(out_dir)
    plots = _write_report_plots(rows, confusions, out_dir / "plots", device_timings or {})
    path = out_dir / "report.md"
    write_text(path, report_markdown(rows, plots, title=title, config_summary=config_summary, notes=notes,
                                     profiles=profiles, allocations=allocations, tensor_errors=tensor_errors,
                                     devices=device_section(device_timings or {}, rows)))
    return path


def _write_report_plots(rows: Sequence[Mapping], confusions: Mapping[str, Mapping],
                        plot_dir: Path, device_timings: Mapping[str, dict]) -> list[tuple[str, str]]:
    """Draw every plot of the report; returns (caption, link relative to report.md) pairs in order."""
    plots = [("Accuracy vs. size", plot_tradeoff(rows, plot_dir / "tradeoff.png")),
             ("Latency", plot_latency(rows, plot_dir / "latency.png"))]
    if device_timings:
        plots.append(("Accuracy vs. latency ratio on each machine",
                      plot_devices(rows, device_timings, plot_dir / "devices.png")))
    for name in _confusion_order(rows, confusions):
        file_name = "confusion_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png"
        path = plot_confusion(confusions[name], name, plot_dir / file_name)
        plots.append((f"Confusion matrix: {name}", path))
    return [(caption, f"plots/{path.name}") for caption, path in plots]


def _confusion_order(rows: Sequence[Mapping], confusions: Mapping[str, Mapping]) -> list[str]:
    ordered = [label(row) for row in sort_rows(rows) if label(row) in confusions]
    return list(dict.fromkeys(ordered)) + sorted(set(confusions) - set(ordered))
