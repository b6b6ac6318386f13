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


# The per-file figures the report logs for each board (`reporting.devices.METRIC_FIGURES`), and the row keys they
# stand in for: `<variant>.<mode>.<device>.ratio_t1` is that board's `latency_ratio_t1`.
DEVICE_FIGURES = {"median_ms": "latency_median_ms", "ratio": "latency_ratio", "fps": "fps"}
MACHINE_TIMINGS = ("latency_", "fps_", "peak_rss_mb", "model_rss_mb")


def on_device(metrics: Mapping[str, float], device: str) -> dict[str, float] | None:
    """The summary metrics with `device`'s timings in place of this machine's, so every reader of a record
    (compare, its plot, the selection rule) sees the board's; None when the run timed nothing on it."""
    timed = {}
    for key, value in metrics.items():
        parts = key.split(SEPARATOR)
        if len(parts) == 4 and parts[2] == device:
            figure, _, threads = parts[3].rpartition("_t")
            name = DEVICE_FIGURES.get(figure)
            if name is not None and threads.isdigit():
                timed[SEPARATOR.join([*parts[:2], f"{name}_t{threads}" if name != "fps" else f"fps_t{threads}"])] = value
            elif parts[3] == "peak_rss_mb":
                timed[SEPARATOR.join([*parts[:2], "peak_rss_mb"])] = value
    if not timed:
        return None
    kept = {key: value for key, value in metrics.items()
            if not (len(key.split(SEPARATOR)) == 3 and key.split(SEPARATOR)[2].startswith(MACHINE_TIMINGS))}
    return {**kept, **timed}
