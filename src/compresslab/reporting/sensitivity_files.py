"""The per-layer sensitivity files a researcher reads: reports/sensitivity/layers.json (every row), layers.csv
(what `dvc plots show` draws) and layers.png (the same drops as a bar chart), the headline figures logged to
MLflow, and drops.md (the files that lose against the control, beside what each layer's int8 range costs).

Takes the rows as plain dicts (`dataclasses.asdict` of `techniques.sensitivity.Sensitivity`), so this module
needs no TensorFlow. Figures are built on `matplotlib.figure.Figure`, never pyplot (no GUI backend).
"""

import csv
import io
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

from compresslab import variants
from compresslab.outputs import atomic_path, write_json, write_text
from compresslab.results.variants_csv import records_from_csv

CSV_COLUMNS = ("layer", "kind", "weights", "pruned_drop_pp", "int8_drop_pp", "pruned_accuracy", "int8_accuracy")
DPI = 150


def write_outputs(result: Mapping, folder: str | Path) -> list[Path]:
    """Write layers.json, layers.csv and layers.png into `folder`; returns their paths."""
    folder = Path(folder)
    paths = [folder / "layers.json", folder / "layers.csv", folder / "layers.png"]
    write_json(paths[0], {"split": "val", **result})
    write_plot_data(result["layers"], paths[1])
    plot_drops(result, paths[2])
    return paths


def write_plot_data(rows, path: str | Path) -> None:
    """One line per layer, most sensitive first; int8 cells are empty where it was not measured."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(["" if row[column] is None else row[column] for column in CSV_COLUMNS])
    write_text(path, buffer.getvalue())


def plot_drops(result: Mapping, path: str | Path) -> None:
    """Horizontal bars: each layer's accuracy drop when pruned alone and when quantized alone to int8."""
    rows = result["layers"]
    height = 1.2 + 0.45 * len(rows)
    fig = Figure(figsize=(8.0, height), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    positions = range(len(rows))
    bar = 0.4
    ax.barh([p - bar / 2 for p in positions], [row["pruned_drop_pp"] for row in rows], height=bar,
            label=f"pruned alone to {result['sparsity']:.0%}", color="tab:red")
    measured = [(p, row["int8_drop_pp"]) for p, row in zip(positions, rows) if row["int8_drop_pp"] is not None]
    if measured:
        ax.barh([p + bar / 2 for p, _ in measured], [drop for _, drop in measured], height=bar,
                label="quantized alone to int8", color="tab:blue")
    ax.set_yticks(list(positions), [f"{row['layer']} ({row['weights']:,} w)" for row in rows])
    ax.invert_yaxis()  # most sensitive at the top
    ax.axvline(0, color="black", linewidth=0.8)
    figure = result.get("figure", "accuracy")
    ax.set_xlabel(f"validation {figure} drop ({'percentage points' if figure == 'accuracy' else 'points x 100'})")
    fine_tune = f", {result['epochs']} fine-tuning epochs" if result["epochs"] else ", no fine-tune"
    ax.set_title(f"Per-layer sensitivity: one layer compressed at a time\n(reference {figure} "
                 f"{result['reference_accuracy']:.4f} on {result['images']} validation images{fine_tune})",
                 fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    with atomic_path(path) as partial:
        fig.savefig(partial, format="png", dpi=DPI)


def headline_metrics(result: Mapping) -> dict[str, float]:
    """What MLflow gets: the reference accuracy, the worst drops and every layer's drops."""
    rows = result["layers"]
    metrics = {"reference_accuracy": result["reference_accuracy"],
               "worst_pruned_drop_pp": max(row["pruned_drop_pp"] for row in rows)}
    int8 = [row["int8_drop_pp"] for row in rows if row["int8_drop_pp"] is not None]
    if int8:
        metrics["worst_int8_drop_pp"] = max(int8)
    for row in rows:
        metrics[f"pruned_drop_pp.{row['layer']}"] = row["pruned_drop_pp"]
        if row["int8_drop_pp"] is not None:
            metrics[f"int8_drop_pp.{row['layer']}"] = row["int8_drop_pp"]
    return metrics


def drops_markdown(result: Mapping, variants_csv: str) -> str:
    """reports/sensitivity/drops.md: every file that loses significantly against the float control, beside what
    full-integer ranges cost the baseline all at once (baseline-int8 against baseline-float32, the same images)
    and what the worst layers' int8 ranges cost alone (the sensitivity's int8 arm).

    When the ranges together cost little, they cannot explain a larger drop: for a QAT file it comes from the
    fine-tuning under the quantization wrappers. When they cost most of it, the worst layers alone are the ones to
    keep in float or to train.

    Args:
      result: layers.json (`techniques.sensitivity.Sensitivity` as a dict).
      variants_csv: the text of reports/variants.csv.
    """
    records = records_from_csv(variants_csv)
    figure = result.get("figure", "accuracy")
    unit = "pp" if figure == "accuracy" else "points"
    column = "map" if figure == "mAP" else "accuracy"

    def delta(record, against: str = "") -> float | None:   # against "" (baseline-float32) or "_control"
        return getattr(record, f"{column}_delta{against}_pp")
    int8 = sorted((row for row in result["layers"] if row["int8_drop_pp"] is not None),
                  key=lambda row: -row["int8_drop_pp"])
    worst = ", ".join(f"{row['layer']} ({row['int8_drop_pp']:+.2f})" for row in int8[:3])
    lines = ["# Which layers explain the drops", "",
             f"Per-layer sensitivity of the baseline (reports/sensitivity/layers.json): validation {figure} "
             f"{result['reference_accuracy']:.4f} on {result['images']} images. "
             + (f"Each layer quantized alone to int8 costs at most {int8[0]['int8_drop_pp']:.2f} {unit} "
                f"(worst: {worst})." if int8 else "The int8-alone arm was not measured (sensitivity.quantize "
                                                  "is false).")]
    ptq = next((record for record in records if (record.variant, record.mode) == (variants.BASELINE, "int8")), None)
    ptq_loss = -delta(ptq) if ptq and delta(ptq) is not None else None
    ptq_significant = bool(ptq and ptq.significant)
    if ptq_loss is not None:
        lines.append(f"All ranges at once (baseline-int8 against baseline-float32, test): {-ptq_loss:+.2f} {unit}, "
                     f"{'significant' if ptq_significant else 'not significant (ns)'}.")
    dropped = [record for record in records if record.significant_control and (delta(record, "_control") or 0) < 0]
    lines.append("")
    if not dropped:
        lines.append("No file loses significantly against the float control: nothing to explain.")
        return "\n".join(lines) + "\n"
    lines += [f"| file | Δ ctrl ({unit}, test) | reading |", "| --- | --- | --- |"]
    for record in dropped:
        loss = -delta(record, "_control")
        if record.mode != "int8":
            reading = "not an int8 file: its technique, not a range, costs this"
        elif ptq_loss is None or not int8:
            reading = "not known: needs baseline-int8 in the report and sensitivity.quantize=true"
        elif ptq_significant and ptq_loss >= 0.5 * loss:
            reading = (f"the int8 ranges: they cost the baseline {ptq_loss:.2f} {unit} at once; keep the worst "
                       f"layers ({', '.join(row['layer'] for row in int8[:3])}) in float (quantize.layers) or "
                       f"train their ranges (QAT)")
        else:
            reading = (f"not the int8 ranges (they cost the baseline {ptq_loss:.2f} {unit} at once, one layer "
                       f"at most {int8[0]['int8_drop_pp']:.2f}): "
                       + ("its fine-tuning under the quantization wrappers; see its stage's history.csv"
                          if variants.is_qat(record.variant) else "its technique"))
        lines.append(f"| {record.label} | {-loss:+.2f} | {reading} |")
    return "\n".join(lines) + "\n"

