"""reports/variants.csv: every figure of every file, one row per file, numbers unrounded.

Columns: BASE_COLUMNS with the STATISTICS_COLUMNS the rows hold after `accuracy`, the per-thread latency
figures the rows hold (by thread count), DELEGATION_COLUMNS held, TAIL_COLUMNS, then any other key in the
order first seen (`val_accuracy` among them, where it has always been). None and NaN are empty cells; floats
are written with repr, so reading the file back gives the same numbers.
"""

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import fields

import numpy as np

from compresslab.results.record import THREAD_FIGURES, Record, as_record, thread_counts, thread_key

BASE_COLUMNS = (
    "variant", "mode", "file", "accuracy", "macro_precision", "macro_recall", "macro_f1", "positive_class",
    "positive_precision", "positive_recall", "positive_f1", "file_bytes", "gzip_bytes", "parameters",
    "nonzero_parameters", "sparsity", "macs",
)
# How far each accuracy can be trusted and how it compares on the same images (see reporting.scoring); these
# follow `accuracy` when the rows hold them.
STATISTICS_COLUMNS = (
    "test_images", "accuracy_ci_low", "accuracy_ci_high", "accuracy_delta_pp", "p_value", "significant",
    "accuracy_delta_control_pp", "p_value_control", "significant_control", "keras_agreement",
    "baseline_agreement",
)
# A detection study's rows (they hold `map`) lead with the COCO figures instead (the VOC study's CSV).
DETECTION_BASE_COLUMNS = (
    "variant", "mode", "file", "map", "map50", "map75", "ar100", "box_precision", "box_recall", "file_bytes",
    "gzip_bytes", "parameters", "nonzero_parameters", "sparsity", "macs",
)
DETECTION_STATISTICS_COLUMNS = (
    "test_images", "test_objects", "map_ci_low", "map_ci_high", "map_delta_pp", "map_delta_ci_low_pp",
    "map_delta_ci_high_pp", "significant", "map_delta_control_pp", "map_delta_control_ci_low_pp",
    "map_delta_control_ci_high_pp", "significant_control", "keras_map", "val_map",
)
TAIL_COLUMNS = ("peak_rss_mb", "model_rss_mb", "gzip_ratio", "latency_ratio", "error")
# How much of each file XNNPACK runs (from its execution plan), when the rows hold it: where the time goes.
DELEGATION_COLUMNS = ("xnnpack_partitions", "xnnpack_operator_share", "operators_outside_xnnpack", "sparse_inference",
                      "time_in_xnnpack_share")


def variants_csv(rows: Sequence[Record | Mapping]) -> str:
    """The text of variants.csv."""
    encoded = [as_record(row).to_row() for row in rows]
    columns = csv_columns(encoded)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in encoded:
        writer.writerow([_csv_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def csv_columns(rows: Sequence[Record | Mapping]) -> list[str]:
    """The stable column order of the module docstring."""
    encoded = [as_record(row).to_row() for row in rows]

    def held(keys):
        return [key for key in keys if any(key in row for row in encoded)]

    detection = any("map" in row for row in encoded)
    base, statistics, quality = ((DETECTION_BASE_COLUMNS, DETECTION_STATISTICS_COLUMNS, "ar100") if detection else
                                 (BASE_COLUMNS, STATISTICS_COLUMNS, "accuracy"))
    at = base.index(quality) + 1
    columns = [*base[:at], *held(statistics), *base[at:],
               *held(thread_key(figure, n) for n in thread_counts(encoded) for figure in THREAD_FIGURES),
               *held(DELEGATION_COLUMNS), *TAIL_COLUMNS]
    known = set(columns)
    extras = [key for row in encoded for key in row if key not in known]
    return columns + list(dict.fromkeys(extras))


def records_from_csv(text: str) -> list[Record]:
    """variants.csv read back as records: each cell decoded by its field's type (empty: None; latency figures
    and unknown numeric columns as floats)."""
    return [Record.from_row({key: _decoded(key, cell) for key, cell in row.items()})
            for row in csv.DictReader(io.StringIO(text))]


def _decoded(key: str, cell: str):
    if key in ("variant", "mode") or cell is None:
        return cell
    if cell == "":
        return None
    kind = _FIELD_TYPES.get(key)
    if kind is str:
        return cell
    if kind is bool:
        return cell == "True"
    if kind is int:
        return int(cell)
    try:
        return float(cell)
    except ValueError:
        return cell   # a text column this contract does not know


# The type of each scalar field of Record (its annotation is `T | None`).
_FIELD_TYPES = {item.name: next(arg for arg in item.type.__args__ if arg is not type(None))
                for item in fields(Record) if getattr(item.type, "__args__", None) and type(None) in item.type.__args__}


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)
