"""reports/metrics.json: the headline figures of every file, the columns `dvc exp show` lists, and back.

Rounded so `dvc exp show` columns stay readable: accuracy, its interval, ratios, sparsity and latency to 4
significant digits, bytes to ints, accuracy changes to 0.01 pp (the resolution of a 4-digit accuracy),
p-values to 3 digits. Figures that are None or NaN are left out rather than written as null.
"""

import math
from collections.abc import Mapping, Sequence

from compresslab.results.record import Record, as_number, as_record, thread_counts, thread_key

FAILED = "failed"   # the key listing the files that could not be evaluated


def headline_metrics(rows: Sequence[Record | Mapping]) -> dict:
    """The DVC metrics for reports/metrics.json, nested {variant: {mode: {...}}}.

    Args:
      rows: records, or their rows.

    Returns:
      {variant: {mode: {accuracy, accuracy_ci_low, accuracy_ci_high, gzip_bytes, gzip_ratio, sparsity,
      latency_median_ms_t<n> and latency_ratio_t<n> for every thread count, accuracy_delta_pp, p_value, accuracy_delta_control_pp,
      val_accuracy (validation split, for choices)}}},
      plus 'failed': ['variant-mode', ...] when any row has an error.
    """
    records = [as_record(row) for row in rows]
    # The interleaved ratio to baseline-float32 beside each median: milliseconds drift between runs and
    # machines, the ratio holds, so it is the latency figure to compare experiments by.
    latency_keys = [thread_key(figure, n) for n in thread_counts(records) for figure in ("median_ms", "ratio")]
    rounders = {"accuracy": _significant, "accuracy_ci_low": _significant, "accuracy_ci_high": _significant,
                "gzip_bytes": _whole, "gzip_ratio": _significant, "sparsity": _significant,
                **{key: _significant for key in latency_keys}, "accuracy_delta_pp": _hundredths,
                "p_value": lambda value: _significant(value, 3), "accuracy_delta_control_pp": _hundredths,
                "val_accuracy": _significant,
                # detection (present only in a detection study's rows)
                "map": _significant, "map_ci_low": _significant, "map_ci_high": _significant, "map50": _significant,
                "map_delta_pp": _hundredths, "map_delta_control_pp": _hundredths, "val_map": _significant}
    metrics: dict = {}
    failed = []
    for record in records:
        if record.failed:
            failed.append(record.label)
            continue
        row = record.to_row()
        figures = {}
        for key, rounder in rounders.items():
            value = as_number(row.get(key))
            if value is not None:
                figures[key] = rounder(value)
        metrics.setdefault(str(record.variant), {})[str(record.mode)] = figures
    if failed:
        metrics[FAILED] = failed
    return metrics


def records_from_headline(metrics: Mapping) -> list[Record]:
    """The records (headline figures only) of a reports/metrics.json, as `dvc exp show --json` gives it."""
    return [Record.from_row({"variant": variant, "mode": mode, **figures})
            for variant, modes in metrics.items() if variant != FAILED and isinstance(modes, Mapping)
            for mode, figures in modes.items() if isinstance(figures, Mapping)]


def _significant(value: float, digits: int = 4) -> float:
    if value == 0 or math.isinf(value):
        return float(value)
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def _whole(value: float) -> int:
    return int(round(value))


def _hundredths(value: float) -> float:
    return round(value, 2)
