"""Evaluating TFLite files: quality on the test split, size read back from the file, speed and memory.

One row per file, every figure a researcher compares (see `report.py` for what is written from the rows).
A file that cannot be evaluated becomes a row with its `error`, so the others are still reported.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from compresslab import latency, metrics, tflite_file, variants
from compresslab.errors import UserError

QUALITY_KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "positive_class",
                "positive_precision", "positive_recall", "positive_f1")


def validate_evaluate_config(cfg: Mapping) -> list[int]:
    """Check the `evaluate` group before any file is run; returns the thread counts."""
    threads = list(cfg["threads"] or [])
    if not threads or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in threads):
        raise UserError(f"evaluate.threads={threads} must be a non-empty list of positive thread counts, "
                        f"e.g. [1, 2]")
    for key in ("warmup_runs", "min_runs"):
        if not isinstance(cfg[key], int) or cfg[key] < (0 if key == "warmup_runs" else 1):
            raise UserError(f"evaluate.{key} must be a whole number ({'0' if key == 'warmup_runs' else '1'} "
                            f"or more), got {cfg[key]!r}")
    return threads


def evaluate_file(path: Path, test: tuple[np.ndarray, np.ndarray], class_names: Sequence[str],
                  cfg: Mapping) -> dict:
    """Every figure for one .tflite file; raises UserError (TfliteFileError) when the file is unusable.

    Returns:
      A row: variant, mode, file, the quality figures, y_pred (per test sample, for the confusion plot),
      confusion, file_bytes, gzip_bytes, parameters, nonzero_parameters, sparsity, macs, latency and fps per
      thread count (`*_t{n}` keys), peak_rss_mb and model_rss_mb.
    """
    variant, mode = variants.split_label(path.stem)
    x, y = test
    interpreter = tflite_file.load_interpreter(path)
    tflite_file.check_input_shape(interpreter, x.shape[1:])
    scores = tflite_file.predict(interpreter, x)
    quality = metrics.quality(y, scores, list(class_names), cfg.get("positive_class"))
    stats = tflite_file.weight_stats(path)
    row = {"variant": variant, "mode": mode, "file": str(path),
           **{key: quality.get(key) for key in QUALITY_KEYS},
           "file_bytes": path.stat().st_size, "gzip_bytes": tflite_file.gzip_size(path),
           "parameters": stats["parameters"], "nonzero_parameters": stats["nonzero"],
           "sparsity": stats["sparsity"], "macs": stats["macs"],
           "confusion": quality["confusion"], "y_pred": np.argmax(scores, axis=1).tolist()}
    sample = x[:1]
    timings = latency.latency_by_threads(path, list(cfg["threads"]), warmup=cfg["warmup_runs"],
                                         min_runs=cfg["min_runs"], min_seconds=cfg["min_seconds"],
                                         input_sample=sample)
    for threads, timing in timings.items():
        for key in ("median_ms", "p90_ms", "mean_ms", "std_ms"):
            row[f"latency_{key}_t{threads}"] = timing[key]
        row[f"fps_t{threads}"] = timing["fps"]
    memory = latency.peak_memory(path, sample) if cfg.get("measure_memory", True) else {}
    row["peak_rss_mb"], row["model_rss_mb"] = memory.get("peak_rss_mb"), memory.get("model_rss_mb")
    return row


def add_ratios(rows: list[dict], threads: Sequence[int]) -> None:
    """Set gzip_ratio, latency_ratio and accuracy_delta_pp of every row against the float32 baseline file."""
    baseline = next((r for r in rows if f"{r['variant']}-{r['mode']}" == variants.BASELINE_FILE
                     and not r.get("error")), None)
    for row in rows:
        found = metrics.ratios(row, baseline, latency_key=f"latency_median_ms_t{threads[0]}") if baseline else {}
        for key in ("gzip_ratio", "latency_ratio", "accuracy_delta_pp"):
            row[key] = found.get(key)


def error_row(path: Path, reason: str) -> dict:
    variant, mode = variants.split_label(path.stem)
    return {"variant": variant, "mode": mode, "file": str(path), "error": reason}
