"""The per-layer sensitivity files a researcher reads: reports/sensitivity/layers.json (every row), layers.csv
(what `dvc plots show` draws) and layers.png (the same drops as a bar chart), plus the headline figures logged
to MLflow.

Takes the rows as plain dicts (`dataclasses.asdict` of `techniques.sensitivity.Sensitivity`), so this module
needs no TensorFlow. Figures are built on `matplotlib.figure.Figure`, never pyplot (no GUI backend).
"""

import csv
import io
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

from compresslab.outputs import atomic_path, write_json, write_text

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
    ax.set_xlabel("validation accuracy drop (percentage points)")
    fine_tune = f", {result['epochs']} fine-tuning epochs" if result["epochs"] else ", no fine-tune"
    ax.set_title(f"Per-layer sensitivity: one layer compressed at a time\n(reference accuracy "
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
