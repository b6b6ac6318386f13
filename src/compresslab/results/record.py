"""One evaluated .tflite file as a typed record, and its flat row: the evaluate JSON row and the figures of
the MLflow summary keys and of reports/metrics.json are all this row, keyed by these names.

A row holds one key per figure; latency is per thread count, `latency_median_ms_t2` / `fps_t2` /
`latency_ratio_t2`, and only this module reads thread counts out of key names (`thread_key` builds them).
A figure that was measured and has no value (a profile that failed) is kept as such (`no_value`) so that it
is written again as an empty cell; a figure never measured has no key at all.
"""

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields

from compresslab import variants

# Per thread count: median, quartiles, p90, mean and spread of one inference, frames per second, and the
# ratio to baseline-float32 timed in alternating rounds in one process (with its quartiles over rounds).
THREAD_FIGURES = ("median_ms", "p25_ms", "p75_ms", "p90_ms", "mean_ms", "std_ms", "fps", "ratio", "ratio_p25",
                  "ratio_p75")
_THREAD_KEY = re.compile(r"^(?:latency_(?P<latency>[a-z0-9_]+?)|(?P<fps>fps))_t(?P<threads>\d+)$")


def thread_key(figure: str, threads: int) -> str:
    """The row key of a per-thread figure: ('median_ms', 2) -> 'latency_median_ms_t2', ('fps', 1) -> 'fps_t1'."""
    return f"fps_t{threads}" if figure == "fps" else f"latency_{figure}_t{threads}"


def parse_thread_key(key: str) -> tuple[str, int] | None:
    """('median_ms', 2) from 'latency_median_ms_t2'; None for a key that is not a per-thread figure."""
    match = _THREAD_KEY.match(key)
    if match is None:
        return None
    figure = match.group("fps") or match.group("latency")
    return (figure, int(match.group("threads"))) if figure in THREAD_FIGURES else None


@dataclass
class ThreadLatency:
    """One file's speed at one thread count (milliseconds; the ratios are to baseline-float32)."""
    median_ms: float | None = None
    p25_ms: float | None = None
    p75_ms: float | None = None
    p90_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    fps: float | None = None
    ratio: float | None = None
    ratio_p25: float | None = None
    ratio_p75: float | None = None


@dataclass
class Record:
    """Every figure of one evaluated file (None: not measured). Groups, in row order: identity; test-split
    quality; validation quality (what choices are decided on); statistics against baseline-float32 and the
    control; sizes; weights; latency per thread count; memory; XNNPACK delegation."""
    variant: str
    mode: str
    file: str | None = None
    error: str | None = None
    y_pred: list[int] | None = None   # the predicted class per test image (evaluate only; scored, then dropped)
    accuracy: float | None = None
    macro_precision: float | None = None
    macro_recall: float | None = None
    macro_f1: float | None = None
    positive_class: str | None = None
    positive_precision: float | None = None
    positive_recall: float | None = None
    positive_f1: float | None = None
    val_accuracy: float | None = None
    test_images: int | None = None
    accuracy_ci_low: float | None = None
    accuracy_ci_high: float | None = None
    accuracy_delta_pp: float | None = None
    p_value: float | None = None
    significant: bool | None = None
    accuracy_delta_control_pp: float | None = None
    p_value_control: float | None = None
    significant_control: bool | None = None
    # Detection (data.task=detection): COCO figures on the test split, each mAP with its 95 % bootstrap interval
    # over test images and, against baseline-float32 and the control, a paired bootstrap interval of the
    # difference (`significant` / `significant_control`: it excludes 0). Fractions; deltas in points.
    map: float | None = None
    map50: float | None = None
    map75: float | None = None
    ar100: float | None = None
    box_precision: float | None = None   # at evaluate.score_threshold and IoU 0.5
    box_recall: float | None = None
    val_map: float | None = None
    test_objects: int | None = None
    map_ci_low: float | None = None
    map_ci_high: float | None = None
    map_delta_pp: float | None = None
    map_delta_ci_low_pp: float | None = None
    map_delta_ci_high_pp: float | None = None
    map_delta_control_pp: float | None = None
    map_delta_control_ci_low_pp: float | None = None
    map_delta_control_ci_high_pp: float | None = None
    keras_map: float | None = None       # the Keras model's test mAP: a conversion bug shows as a gap to `map`
    keras_agreement: float | None = None
    baseline_agreement: float | None = None
    file_bytes: int | None = None
    gzip_bytes: int | None = None
    gzip_ratio: float | None = None
    parameters: int | None = None
    nonzero_parameters: int | None = None
    sparsity: float | None = None
    macs: int | None = None
    latency: dict[int, ThreadLatency] = field(default_factory=dict)
    latency_ratio: float | None = None   # at the first configured thread count: the headline ratio
    peak_rss_mb: float | None = None
    model_rss_mb: float | None = None
    xnnpack_partitions: int | None = None
    xnnpack_operator_share: float | None = None
    operators_outside_xnnpack: str | None = None
    sparse_inference: str | None = None
    time_in_xnnpack_share: float | None = None
    extras: dict = field(default_factory=dict)          # keys this contract does not know, in their order
    no_value: set[str] = field(default_factory=set)     # row keys measured without a value

    @property
    def label(self) -> str:
        return variants.label(self.variant, self.mode)

    @property
    def failed(self) -> bool:
        return bool(self.error)

    def at(self, threads: int) -> ThreadLatency:
        """The latency at `threads` (all None when not measured there)."""
        return self.latency.get(threads) or ThreadLatency()

    # --------------------------------------------------------------------------------------- the row

    @classmethod
    def from_row(cls, row: Mapping) -> "Record":
        """Decode a flat row (evaluate JSON, variants.csv, MLflow summary or metrics.json figures)."""
        record = cls(variant=row["variant"], mode=row["mode"])
        for key, value in row.items():
            if key in ("variant", "mode"):
                continue
            if value is None:
                record.no_value.add(key)
            if key in _SCALARS:
                setattr(record, key, value)
            elif (found := parse_thread_key(key)) is not None:
                figure, threads = found
                setattr(record.latency.setdefault(threads, ThreadLatency()), figure, value)
            else:
                record.extras[key] = value
        return record

    def to_row(self) -> dict:
        """The flat row: every measured figure under its key (latency per thread count, ascending)."""
        row = {"variant": self.variant, "mode": self.mode}
        for name in _SCALARS:
            self._put(row, name, getattr(self, name))
            if name == "macs":   # per-thread latency goes after the weights, as the rows have always held it
                for threads in sorted(self.latency):
                    for figure in THREAD_FIGURES:
                        self._put(row, thread_key(figure, threads), getattr(self.latency[threads], figure))
        row.update(self.extras)
        return row

    def _put(self, row: dict, key: str, value) -> None:
        if value is not None or key in self.no_value:
            row[key] = value


_SCALARS = tuple(f.name for f in fields(Record) if f.name not in ("variant", "mode", "latency", "extras",
                                                                   "no_value"))


def as_record(row: "Record | Mapping") -> Record:
    return row if isinstance(row, Record) else Record.from_row(row)


def label(row: "Record | Mapping") -> str:
    """The 'variant-mode' name of a row or record, as used in metrics.json, plots and confusions."""
    return row.label if isinstance(row, Record) else variants.label(row["variant"], row["mode"])


def thread_counts(rows: Iterable["Record | Mapping"]) -> list[int]:
    """The thread counts the rows hold a median latency for, ascending."""
    found = set()
    for row in rows:
        if isinstance(row, Record):
            found.update(n for n, latency in row.latency.items()
                         if latency.median_ms is not None or thread_key("median_ms", n) in row.no_value)
        else:
            found.update(n for key in row if (parsed := parse_thread_key(key)) and parsed[0] == "median_ms"
                         for n in (parsed[1],))
    return sorted(found)


def by_file(records: Sequence[Record]) -> dict[tuple[str, str], Record]:
    """{(variant, mode): record}: one run's files, as the selection rule reads them."""
    return {(record.variant, record.mode): record for record in records}


def as_number(value) -> float | None:
    """A float, or None for None, NaN and values that are not numbers (text, empty cells)."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number
