"""The data files beside the report: variants.csv (every figure of every file) and the CSVs `dvc plots` draws.

Written atomically like every stage output; no TensorFlow, no matplotlib.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from compresslab.errors import UserError
from compresslab.outputs import write_text
from compresslab.reporting.formatting import KB
from compresslab.reporting.rows import drawable, sort_rows
from compresslab.results.record import as_number, label, thread_counts, thread_key
from compresslab.results.variants_csv import variants_csv


def write_variants_csv(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Every figure of every evaluated file, one CSV row per file, numbers unrounded (`results.variants_csv`),
    written atomically: a killed stage never leaves half a file."""
    write_text(path, variants_csv(rows))
    return Path(path)


def write_plot_data(rows: Sequence[Mapping], out_dir: str | Path) -> list[Path]:
    """The CSVs `dvc plots` draws: tradeoff.csv (map_tradeoff.csv for detection) and latency.csv in out_dir.

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
    # A detection study's quality is its mAP, drawn by its own `dvc plots` entry (map_tradeoff.csv).
    quality, name = ("map", "map_tradeoff.csv") if any("map" in row for row in shown) else ("accuracy", "tradeoff.csv")
    tradeoff = [{"label": label(row), "variant": row["variant"], "mode": row["mode"],
                 "gzip_kb": as_number(row.get("gzip_bytes")) / KB, quality: as_number(row.get(quality))}
                for row in shown
                if as_number(row.get("gzip_bytes")) is not None and as_number(row.get(quality)) is not None]
    latency = [{"label": label(row), "threads": n, "median_ms": as_number(row.get(thread_key("median_ms", n)))}
               for row in shown for n in threads
               if as_number(row.get(thread_key("median_ms", n))) is not None]
    tradeoff_columns = ["label", "variant", "mode", "gzip_kb", quality]
    written = [_write_frame(tradeoff, tradeoff_columns, out_dir / name),
               _write_frame(latency, ["label", "threads", "median_ms"], out_dir / "latency.csv")]
    # dvc.yaml declares every task's plots; the other task's files are written empty (a header), so that
    # `dvc plots show` draws nothing for them instead of warning about missing files.
    for other, columns in OTHER_TASK_PLOTS[quality].items():
        _write_frame([], columns, out_dir / other)
    return written


# The `dvc plots` files of the other task, by the quality this one draws: written as headers only.
OTHER_TASK_PLOTS = {"accuracy": {"map_tradeoff.csv": ["label", "variant", "mode", "gzip_kb", "map"]},
                    "map": {"tradeoff.csv": ["label", "variant", "mode", "gzip_kb", "accuracy"],
                            "confusion.csv": ["actual", "predicted"]}}


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


