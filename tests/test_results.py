"""The result contract's encodings round-trip: evaluate row -> record -> row, record -> MLflow summary keys ->
record, record -> metrics.json headline -> record."""

import pytest

from compresslab.results.headline import headline_metrics, records_from_headline
from compresslab.results.record import Record, ThreadLatency, parse_thread_key, thread_counts, thread_key
from compresslab.results.summary import summary_metrics, records_from_summary
from compresslab.results.variants_csv import csv_columns, records_from_csv, variants_csv


def evaluated_row() -> dict:
    """A row as measure_file and the report stage's scoring leave it (two thread counts, a failed profile)."""
    row = {"variant": "pruned", "mode": "int8", "file": "models/tflite/pruned/pruned-int8.tflite",
           "keras_agreement": 0.998, "file_bytes": 500_000, "gzip_bytes": 170_000, "parameters": 50_000,
           "nonzero_parameters": 25_000, "sparsity": 0.5, "macs": 8_810_000, "xnnpack_partitions": 5,
           "xnnpack_operator_share": 0.8, "operators_outside_xnnpack": "AVERAGE_POOL_2D x3",
           "sparse_inference": "no: int8", "val_accuracy": 0.9613}
    for n in (1, 2):
        row.update({thread_key(figure, n): 0.1 * n + k / 100 for k, figure in enumerate(
            ("median_ms", "p25_ms", "p75_ms", "p90_ms", "mean_ms", "std_ms", "fps", "ratio", "ratio_p25",
             "ratio_p75"))})
    row.update(peak_rss_mb=41.5, model_rss_mb=None, accuracy=0.9587, macro_precision=0.95, macro_recall=0.94,
               macro_f1=0.945, positive_class=None, test_images=750, accuracy_ci_low=0.94, accuracy_ci_high=0.97,
               accuracy_delta_pp=-0.66, p_value=0.2, significant=False, baseline_agreement=0.97, gzip_ratio=0.07,
               latency_ratio=0.17, accuracy_delta_control_pp=-0.5, p_value_control=0.3,
               significant_control=False, time_in_xnnpack_share=None, converter="2.21")
    return row


def test_a_row_decodes_into_typed_fields_and_encodes_back_to_the_same_keys_and_values():
    row = evaluated_row()
    record = Record.from_row(row)
    assert record.label == "pruned-int8" and record.accuracy == 0.9587 and record.val_accuracy == 0.9613
    assert sorted(record.latency) == [1, 2] and record.at(2).median_ms == pytest.approx(0.2)
    assert record.at(1).ratio_p75 == pytest.approx(0.19) and record.at(4) == ThreadLatency()
    assert record.extras == {"converter": "2.21"}
    assert record.no_value == {"model_rss_mb", "positive_class", "time_in_xnnpack_share"}
    assert record.to_row() == row
    assert set(record.to_row()) == set(row)   # measured without a value stays a key: an empty cell, not no column


def test_a_failed_file_keeps_its_reason_and_has_no_figures_anywhere():
    failed = Record.from_row({"variant": "cqat", "mode": "int8", "file": "cqat-int8.tflite",
                              "error": "conversion failed: x"})
    assert failed.failed and failed.to_row() == {"variant": "cqat", "mode": "int8", "file": "cqat-int8.tflite",
                                                 "error": "conversion failed: x"}
    assert summary_metrics([failed]) == {}
    assert headline_metrics([failed]) == {"failed": ["cqat-int8"]}


def test_the_mlflow_summary_keys_name_variant_mode_and_figure_and_decode_to_the_same_record():
    record = Record.from_row(evaluated_row())
    metrics = summary_metrics([record])
    assert metrics["pruned.int8.accuracy"] == 0.9587
    assert metrics["pruned.int8.latency_median_ms_t1"] == pytest.approx(0.1)
    assert metrics["pruned.int8.latency_ratio_p25_t2"] == pytest.approx(0.28)
    assert metrics["pruned.int8.significant"] == 0.0   # a flag as 0/1, so the MLflow UI sorts by it
    assert "pruned.int8.operators_outside_xnnpack" not in metrics and "pruned.int8.model_rss_mb" not in metrics
    (back,) = records_from_summary({**metrics, "wall_seconds": 12.0})   # a key that names no file is not a file
    assert (back.variant, back.mode, back.accuracy, back.val_accuracy) == ("pruned", "int8", 0.9587, 0.9613)
    assert back.latency == record.latency and back.gzip_bytes == 170_000
    assert summary_metrics([back]) == metrics


def test_the_headline_figures_are_rounded_and_read_back_as_records():
    headline = headline_metrics([Record.from_row(evaluated_row())])
    figures = headline["pruned"]["int8"]
    assert figures == {"accuracy": 0.9587, "accuracy_ci_low": 0.94, "accuracy_ci_high": 0.97, "gzip_bytes": 170_000,
                       "gzip_ratio": 0.07, "sparsity": 0.5, "latency_median_ms_t1": 0.1, "latency_ratio_t1": 0.17,
                       "latency_median_ms_t2": 0.2, "latency_ratio_t2": 0.27, "accuracy_delta_pp": -0.66,
                       "p_value": 0.2,
                       "accuracy_delta_control_pp": -0.5, "val_accuracy": 0.9613}
    (back,) = records_from_headline({**headline, "failed": ["cqat-int8"]})
    assert back.label == "pruned-int8" and back.val_accuracy == 0.9613 and back.at(2).median_ms == 0.2
    assert headline_metrics([back]) == headline


@pytest.mark.parametrize("key, parsed", [("latency_median_ms_t2", ("median_ms", 2)), ("fps_t1", ("fps", 1)),
                                         ("latency_ratio_p25_t16", ("ratio_p25", 16)), ("latency_ratio", None),
                                         ("latency_bogus_t1", None), ("accuracy", None)])
def test_thread_keys_are_built_and_parsed_in_one_place(key, parsed):
    assert parse_thread_key(key) == parsed
    if parsed:
        assert thread_key(*parsed) == key


def test_thread_counts_and_csv_columns_read_records_and_rows_alike():
    row = evaluated_row()
    assert thread_counts([row]) == thread_counts([Record.from_row(row)]) == [1, 2]
    columns = csv_columns([row])
    assert columns == csv_columns([Record.from_row(row)])
    # val_accuracy and unknown keys follow the tail, where variants.csv has always had them.
    assert columns[-3:] == ["error", "val_accuracy", "converter"]
    assert columns.index("macs") + 1 == columns.index("latency_median_ms_t1")


def test_variants_csv_reads_back_as_typed_records_and_writes_the_same_text():
    failed = {"variant": "cqat", "mode": "int8", "file": "cqat-int8.tflite", "error": "conversion failed: x"}
    text = variants_csv([evaluated_row(), failed])
    record, broken = records_from_csv(text)
    assert record.significant is False and record.significant_control is False   # not the string "False"
    assert record.test_images == 750 and isinstance(record.test_images, int)
    assert record.accuracy == 0.9587 and record.at(2).median_ms == pytest.approx(0.2)
    assert record.positive_class is None and "positive_class" in record.no_value
    assert broken.failed and broken.accuracy is None
    assert variants_csv([record, broken]) == text
