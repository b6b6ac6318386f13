"""The MLflow summary run's metrics: every numeric figure of every file as `<variant>.<mode>.<figure>`
(`pruned.int8.accuracy`, `pruned.int8.latency_median_ms_t1`, `significant` as 0/1), so the MLflow UI can
sort and chart them; and back into records, as `compare` reads a run.
"""

from collections.abc import Mapping, Sequence

from compresslab.results.record import Record, as_number, as_record

SEPARATOR = "."


def summary_metrics(rows: Sequence[Record | Mapping]) -> dict[str, float]:
    """The summary metrics of every file that was evaluated (a failed file has none)."""
    metrics = {}
    for record in map(as_record, rows):
        if record.failed:
            continue
        prefix = f"{record.variant}{SEPARATOR}{record.mode}{SEPARATOR}"
        metrics.update({prefix + key: float(value) for key, value in record.to_row().items()
                        if isinstance(value, (int, float))})
    return metrics


def records_from_summary(metrics: Mapping[str, float]) -> list[Record]:
    """One record per file named in `<variant>.<mode>.<figure>` keys (other keys are not files' figures)."""
    files: dict[tuple[str, str], dict] = {}
    for key, value in metrics.items():
        parts = key.split(SEPARATOR)
        if len(parts) == 3:
            files.setdefault((parts[0], parts[1]), {})[parts[2]] = as_number(value)
    return [Record.from_row({"variant": variant, "mode": mode, **figures})
            for (variant, mode), figures in files.items()]
