"""The report of a detection study: report.md with the mAP table (intervals, paired changes against the
baseline and the control), the per-class AP table, precision-recall curves, the mAP-against-size trade-off and
a grid of test images with ground-truth and predicted boxes. Pure Python, NumPy and matplotlib (no TensorFlow).
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from compresslab import variants
from compresslab.outputs import write_text
from compresslab.reporting import detection_plots
from compresslab.reporting.formatting import DASH, KB, count, fmt, ms
from compresslab.reporting.markdown import (change_cell, config_section, delegation_section, failed_section,
                                            markdown_table, notes_section, plots_section, ratio_cell)
from compresslab.reporting.plots import plot_latency
from compresslab.reporting.rows import drawable, sort_rows
from compresslab.results.record import as_number, label, thread_counts, thread_key


def write_report(rows: Sequence[Mapping], scored: Mapping[str, Mapping], pictures: Mapping, out_dir: str | Path, *,
                 title: str, config_summary: Mapping, notes: Sequence[str] = ()) -> Path:
    """Write out_dir/report.md and its plots in out_dir/plots/.

    Args:
      rows: result rows (`results.record.Record.to_row`), scored by `detection_scoring.score_rows`.
      scored: {label: the file's COCO scores} (per-class AP, PR curves).
      pictures: {'images': test images (N, H, W, C) in [0, 1], 'ground_truth': their boxes, 'detections':
        {label: boxes per image} of the files drawn, 'class_names', 'score_threshold'}.
      out_dir, title, config_summary, notes: as for the classification report.

    Returns:
      The path of report.md.
    """
    out_dir, plot_dir = Path(out_dir), Path(out_dir) / "plots"
    control = next((row for row in rows if label(row) == f"{variants.CONTROL}-float32"
                    and row.get("map_ci_low") is not None), None)
    band = (control["map_ci_low"], control["map_ci_high"]) if control else None
    plots = [("mAP vs. size", detection_plots.draw_map_tradeoff(tradeoff_points(rows), plot_dir / "tradeoff.png",
                                                                band=band)),
             ("Latency", plot_latency(rows, plot_dir / "latency.png"))]
    curves = {name: scored[name]["pr_curves"] for name in drawn_files(rows, scored)}
    if curves:
        detection_plots.draw_pr_curves(curves, plot_dir / "pr_curves.png")
        plots.append(("Precision-recall curves at IoU 0.5 (one line per class, black: their mean)",
                      plot_dir / "pr_curves.png"))
    if pictures.get("detections"):
        detection_plots.draw_detection_grid(pictures["images"], pictures["ground_truth"], pictures["detections"],
                                            pictures["class_names"], plot_dir / "detections.png",
                                            score_threshold=pictures["score_threshold"])
        plots.append((f"Test images: ground truth, then each file's boxes scoring at least "
                      f"{pictures['score_threshold']:g}", plot_dir / "detections.png"))
    links = [(caption, f"plots/{Path(path).name}") for caption, path in plots]
    parts = [f"# {title}", config_section(config_summary), results_section(rows),
             per_class_section(rows, scored), delegation_section(rows), failed_section(rows), notes_section(notes),
             plots_section(links)]
    path = out_dir / "report.md"
    write_text(path, "\n\n".join(part for part in parts if part) + "\n")
    return path


def drawn_files(rows: Sequence[Mapping], scored: Mapping) -> list[str]:
    """The files whose curves and boxes are drawn: baseline-float32 and every int8 file (what ships), in
    report order."""
    return [label(row) for row in sort_rows(drawable(rows))
            if label(row) in scored and (label(row) == variants.BASELINE_FILE or row["mode"] == "int8")]


def tradeoff_points(rows: Sequence[Mapping]) -> list[detection_plots.MapPoint]:
    return [detection_plots.MapPoint(label(row), row["gzip_bytes"] / KB, row["map"],
                                     (row["map_ci_low"], row["map_ci_high"]) if row.get("map_ci_low") is not None
                                     else None)
            for row in sort_rows(drawable(rows)) if row.get("map") is not None and row.get("gzip_bytes")]


def results_table(rows: Sequence[Mapping]) -> str:
    threads = thread_counts(rows)
    columns = [("variant", False), ("mode", False), ("mAP [95% CI]", True), ("Δ base pts", True),
               ("Δ ctrl pts", True), ("mAP50", True), ("mAP75", True), ("AR100", True), ("P", True), ("R", True),
               ("Keras mAP", True), ("gzip KB", True), ("×smaller", True), ("sparsity %", True), ("MACs", True),
               *((f"ms t{n}", True) for n in threads),
               *((f"× base t{n}", True) for n in threads if any(thread_key("ratio", n) in row for row in rows)),
               ("peak MB", True)]
    body = []
    for row in sort_rows(drawable(rows)):
        gzip_ratio = as_number(row.get("gzip_ratio"))
        body.append([str(row["variant"]), str(row["mode"]), map_cell(row),
                     change_cell(row.get("map_delta_pp"), row.get("significant")),
                     change_cell(row.get("map_delta_control_pp"), row.get("significant_control")),
                     *(fmt(row.get(key), "{:.3f}") for key in ("map50", "map75", "ar100", "box_precision",
                                                               "box_recall", "keras_map")),
                     fmt(row.get("gzip_bytes"), "{:.1f}", scale=1 / KB),
                     fmt(1 / gzip_ratio if gzip_ratio else None, "{:.2f}×"),
                     fmt(row.get("sparsity"), "{:.1f}", scale=100), count(row.get("macs")),
                     *(ms(row.get(thread_key("median_ms", n))) for n in threads),
                     *(ratio_cell(row, n) for n in threads if any(thread_key("ratio", n) in r for r in rows)),
                     fmt(row.get("peak_rss_mb"), "{:.1f}")])
    return markdown_table(columns, body)


def map_cell(row: Mapping) -> str:
    low, high = as_number(row.get("map_ci_low")), as_number(row.get("map_ci_high"))
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return fmt(row.get("map"), "{:.3f}") + interval


def results_section(rows: Sequence[Mapping]) -> str:
    legend = ("mAP: COCO mAP@[.5:.95] on the test split with its 95 % bootstrap interval over test images; Δ base: "
              "change in points (mAP × 100) vs. baseline-float32; Δ ctrl: vs. the float control of the same mode "
              "(the baseline fine-tuned with the same budget, no compression), i.e. what compression alone costs; "
              "`*`: the paired bootstrap interval of the change (both files on the same resampled images) excludes "
              "0, `ns`: it does not, read as no change; mAP50 / mAP75: at IoU 0.5 / 0.75; AR100: recall with up to "
              "100 boxes per image; P / R: precision and recall at evaluate.score_threshold and IoU 0.5; Keras mAP: "
              "the Keras model's own test mAP (a conversion bug shows as a gap); gzip KB, ×smaller, ms, × base, "
              f"peak MB: as in the classification report. {DASH} = not measured.")
    return f"## Results\n\n{results_table(rows)}\n\n{legend}"


def per_class_section(rows: Sequence[Mapping], scored: Mapping[str, Mapping]) -> str:
    """AP@0.5 per class (rows) for baseline-float32 and every int8 file (columns): which class a compression
    step costs."""
    files = drawn_files(rows, scored)
    if not files:
        return ""
    classes = list(scored[files[0]]["per_class_ap50"])
    columns = [("class", False), *((name, True) for name in files)]
    body = [[name, *(fmt(scored[file]["per_class_ap50"].get(name), "{:.3f}") for file in files)] for name in classes]
    body.append(["mean (mAP50)", *(fmt(scored[file]["map50"], "{:.3f}") for file in files)])
    return ("## Average precision per class (IoU 0.5)\n\n" + markdown_table(columns, body) +
            f"\n\n{DASH}: no test object of that class. Every file's per-class AP is in variants.csv "
            "(`ap50_<class>` columns).")


def picture_files(rows: Sequence[Mapping], scored: Mapping, detections: Mapping) -> dict:
    """{label: boxes per image} of the files the picture grid shows, in report order."""
    return {name: detections[name] for name in drawn_files(rows, scored) if name in detections}


def first_images(split, n: int) -> np.ndarray:
    return split.take(list(range(min(n, len(split)))))
