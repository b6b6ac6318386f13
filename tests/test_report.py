"""Report files from hand-made result rows: CSV round trip, headline metrics, plots, report.md."""

import json
import math
import subprocess
import sys

import matplotlib.image
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from compresslab.errors import UserError
from compresslab.reporting import plots as plots_module
from compresslab.reporting.data_files import write_confusion_samples, write_plot_data, write_variants_csv
from compresslab.reporting.plots import DPI, TRADEOFF_SIZE, plot_confusion, plot_latency, plot_tradeoff
from compresslab.reporting.report import write_report
from compresslab.results.headline import headline_metrics
from compresslab.results.variants_csv import csv_columns

THREADS = (1, 4)
CLASSES = ["cat", "dog", "fox"]


def make_row(variant, mode, accuracy, gzip_bytes, median_t1, median_t4, sparsity=0.0, error=None):
    """A full result row with made-up but self-consistent figures (baseline gzip 200 000 bytes, acc 0.9)."""
    row = {"variant": variant, "mode": mode, "file": f"models/tflite/{variant}-{mode}.tflite",
           "accuracy": accuracy, "macro_precision": accuracy, "macro_recall": accuracy, "macro_f1": accuracy,
           "positive_class": None, "positive_precision": None, "positive_recall": None, "positive_f1": None,
           "file_bytes": gzip_bytes and gzip_bytes * 2, "gzip_bytes": gzip_bytes, "parameters": 50_000,
           "nonzero_parameters": int(50_000 * (1 - sparsity)), "sparsity": sparsity, "macs": 1_234_567}
    for n, median in zip(THREADS, (median_t1, median_t4)):
        row.update({f"latency_median_ms_t{n}": median, f"latency_p90_ms_t{n}": median and median * 1.2,
                    f"latency_mean_ms_t{n}": median and median * 1.05, f"latency_std_ms_t{n}": median and 0.1,
                    f"fps_t{n}": median and 1000 / median})
    row.update({"peak_rss_mb": 41.5, "model_rss_mb": None if error else 1.25,
                "gzip_ratio": gzip_bytes and gzip_bytes / 200_000,
                "latency_ratio": median_t1 and median_t1 / 2.0,
                "accuracy_delta_pp": None if accuracy is None else (accuracy - 0.9) * 100, "error": error})
    if error:
        row.update({key: None for key in row if key not in ("variant", "mode", "file", "error")})
    return row


@pytest.fixture
def rows():
    return [
        make_row("baseline", "float32", 0.9, 200_000, 2.0, 0.9),
        make_row("baseline", "int8", 0.8912345, 52_000, 1.1234567, 0.5),
        make_row("pruned", "float32", 0.88, 90_000, 2.0, None, sparsity=0.8),   # t4 latency missing
        make_row("pruned", "int8", 0.87, 15_000, 1.0, 0.45, sparsity=0.8),
        make_row("qat", "int8", 0.905, 51_000, 1.05, 0.48),
        make_row("clustered", "int8", None, None, None, None, error="conversion failed: unsupported op\nX"),
    ]


@pytest.fixture
def confusions():
    return {"baseline-float32": {"class_names": CLASSES, "matrix": [[9, 1, 0], [2, 7, 1], [0, 0, 10]]},
            "pruned-int8": {"class_names": CLASSES, "matrix": [[8, 2, 0], [1, 8, 1], [1, 0, 9]]}}


def check_png(path, shape=None, min_bytes=5_000):
    assert path.is_file() and path.stat().st_size > min_bytes
    assert not path.with_name(path.name + ".partial").exists()
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] == 4
    if shape is not None:
        assert image.shape[:2] == shape
    return image


def test_module_does_not_import_tensorflow():
    code = "import sys, compresslab.reporting.report; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_variants_csv_round_trips_every_key_in_stable_order(rows, tmp_path):
    path = write_variants_csv(rows, tmp_path / "variants.csv")
    table = pd.read_csv(path)
    columns = csv_columns(rows)
    assert list(table.columns) == columns
    assert columns[:3] == ["variant", "mode", "file"] and columns[-1] == "error"
    assert columns.index("macs") + 1 == columns.index("latency_median_ms_t1")
    assert columns.index("fps_t4") + 1 == columns.index("peak_rss_mb")
    assert set(columns) == set(rows[0])
    assert len(table) == len(rows)
    # Unrounded: repr floats read back exactly.
    assert table.loc[1, "accuracy"] == 0.8912345
    assert table.loc[1, "latency_median_ms_t1"] == 1.1234567
    assert math.isnan(table.loc[2, "latency_median_ms_t4"])
    assert table.loc[5, "error"].startswith("conversion failed")
    assert table["error"].isna().sum() == 5
    # Ints stay ints in the text even in a column that has a missing value.
    assert ",200000," in path.read_text().splitlines()[1]


def test_variants_csv_keeps_unknown_keys_at_the_end(rows, tmp_path):
    rows[0]["converter"] = "2.21"
    table = pd.read_csv(write_variants_csv(rows, tmp_path / "v.csv"))
    assert list(table.columns)[-1] == "converter"
    assert table.loc[0, "converter"] == 2.21 and table["converter"].isna().sum() == len(rows) - 1


def test_headline_metrics_structure_and_rounding(rows):
    metrics = headline_metrics(rows)
    assert set(metrics) == {"baseline", "pruned", "qat", "failed"}
    assert metrics["failed"] == ["clustered-int8"]
    assert set(metrics["baseline"]) == {"float32", "int8"}
    int8 = metrics["baseline"]["int8"]
    assert set(int8) == {"accuracy", "gzip_bytes", "gzip_ratio", "sparsity", "latency_median_ms_t1",
                         "latency_median_ms_t4", "accuracy_delta_pp"}
    assert int8["accuracy"] == 0.8912
    assert int8["gzip_bytes"] == 52_000 and isinstance(int8["gzip_bytes"], int)
    assert int8["gzip_ratio"] == 0.26
    assert int8["latency_median_ms_t1"] == 1.123
    assert int8["accuracy_delta_pp"] == -0.88
    # A missing latency is left out, not written as null.
    assert "latency_median_ms_t4" not in metrics["pruned"]["float32"]
    assert metrics["pruned"]["int8"]["sparsity"] == 0.8
    json.dumps(metrics, allow_nan=False)


def test_headline_metrics_has_no_failed_key_without_failures(rows):
    assert "failed" not in headline_metrics(rows[:-1])


def test_plots_are_written_and_non_trivial(rows, confusions, tmp_path):
    width, height = TRADEOFF_SIZE
    check_png(plot_tradeoff(rows, tmp_path / "tradeoff.png"), shape=(round(height * DPI), round(width * DPI)))
    latency = check_png(plot_latency(rows, tmp_path / "latency.png"))
    assert latency.shape[0] > 400 and latency.shape[1] > 1000
    check_png(plot_confusion(confusions["baseline-float32"], "baseline-float32", tmp_path / "confusion.png"))


def test_plots_tolerate_rows_with_nothing_to_draw(tmp_path):
    failed = [make_row("baseline", "float32", None, None, None, None, error="file missing")]
    check_png(plot_tradeoff(failed, tmp_path / "t.png"), min_bytes=1_000)
    check_png(plot_latency(failed, tmp_path / "l.png"), min_bytes=1_000)


def test_confusion_shape_mismatch_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="square"):
        plot_confusion({"class_names": CLASSES, "matrix": [[1, 2], [3, 4]]}, "bad", tmp_path / "c.png")


def test_plot_data_csvs(rows, tmp_path):
    tradeoff_path, latency_path = write_plot_data(rows, tmp_path)
    tradeoff = pd.read_csv(tradeoff_path)
    assert list(tradeoff.columns) == ["label", "variant", "mode", "gzip_kb", "accuracy"]
    assert list(tradeoff["label"]) == ["baseline-float32", "baseline-int8", "pruned-float32", "pruned-int8",
                                       "qat-int8"]
    assert tradeoff.loc[0, "gzip_kb"] == pytest.approx(200_000 / 1024)
    latency = pd.read_csv(latency_path)
    assert list(latency.columns) == ["label", "threads", "median_ms"]
    assert len(latency) == 5 * 2 - 1   # pruned-float32 has no 4-thread latency
    assert latency.query("label == 'pruned-int8' and threads == 4")["median_ms"].item() == 0.45


def test_confusion_samples_csv(tmp_path):
    path = write_confusion_samples([0, 1, 2, 2], [0, 2, 2, 1], CLASSES, tmp_path / "confusion.csv")
    table = pd.read_csv(path)
    assert list(table.columns) == ["actual", "predicted"]
    assert table.values.tolist() == [["cat", "cat"], ["dog", "fox"], ["fox", "fox"], ["fox", "dog"]]
    with pytest.raises(UserError, match="outside"):
        write_confusion_samples([0, 3], [0, 1], CLASSES, tmp_path / "bad.csv")
    with pytest.raises(UserError, match="same samples"):
        write_confusion_samples([0, 1], [0], CLASSES, tmp_path / "bad.csv")


def test_report_has_table_failed_section_notes_and_plots(rows, confusions, tmp_path):
    path = write_report(rows, confusions, tmp_path / "report", title="Study A",
                        config_summary={"model": "tiny_cnn", "data": {"image_size": 16, "classes": 3}},
                        notes=["int8 calibrated on 100 images"])
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == "# Study A"
    assert "- **data**: image_size=16, classes=3" in lines
    header = next(line for line in lines if line.startswith("| variant"))
    assert "ms t1" in header and "ms t4" in header and "FPS t1" in header and "Δ base pp" in header
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 5                                  # header, rule, five evaluated files
    assert len({len(line) for line in table}) == 1              # padded: all lines equally wide
    cells = {tuple(c.strip() for c in line.strip("|").split("|"))[:2]: [c.strip() for c in line.split("|")]
             for line in table[2:]}
    pruned_int8 = cells[("pruned", "int8")]
    for expected in ("87.00", "-3.00", "14.6", "13.33×", "80.0", "1.23M", "1.00", "0.45", "1000.0", "41.5"):
        assert expected in pruned_int8
    assert "—" in cells[("pruned", "float32")]                  # missing 4-thread latency
    assert ("clustered", "int8") not in cells
    assert "## Failed" in text
    failure = ("- **clustered-int8** (`models/tflite/clustered-int8.tflite`): "
               "conversion failed: unsupported op X")
    assert failure in lines
    assert "- int8 calibrated on 100 images" in lines
    for link in ("plots/tradeoff.png", "plots/latency.png", "plots/confusion_baseline-float32.png",
                 "plots/confusion_pruned-int8.png"):
        assert f"]({link})" in text
        check_png(path.parent / link)
    # Order: table first, then failures, notes, plots.
    assert text.index("## Results") < text.index("## Failed") < text.index("## Notes") < text.index("## Plots")


def test_the_baseline_float32_and_int8_profiles_are_a_time_per_operator_type_table(rows, confusions, tmp_path):
    def profile(ms_by_op, delegated):
        total = sum(ms_by_op.values())
        return {"threads": 1, "total_ms": total, "delegated_share": 0.6, "by_type": [
            {"op": op, "count": 2, "ms": ms, "share": ms / total, "delegated": delegated.get(op, 2)}
            for op, ms in sorted(ms_by_op.items(), key=lambda item: -item[1])]}

    profiles = {"baseline-float32": profile({"CONV_2D": 0.12, "FULLY_CONNECTED": 0.08}, {}),
                "baseline-int8": profile({"CONV_2D": 0.15, "AVERAGE_POOL_2D": 0.09}, {"AVERAGE_POOL_2D": 0}),
                "pruned-int8": profile({"SOFTMAX": 9.0}, {})}
    text = write_report(rows, confusions, tmp_path, title="t", config_summary={}, profiles=profiles).read_text()
    section = text.split("### Time per operator type (1 thread(s))")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert "baseline-float32 ms" in lines[0] and "baseline-int8 ms" in lines[0] and "pruned" not in section
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    assert cells["CONV_2D"] == ["0.1200", "60", "2/2", "0.1500", "62", "2/2"]
    assert cells["AVERAGE_POOL_2D"] == ["—", "—", "—", "0.0900", "38", "0/2"]  # outside XNNPACK, int8 only
    assert cells["**total**"][3] == "0.2400" and "SOFTMAX" not in cells
    assert "Time per operator" not in write_report(rows, confusions, tmp_path / "none", title="t",
                                                   config_summary={}).read_text()


def drawn_tradeoff(rows, tmp_path, monkeypatch):
    """The axes plot_tradeoff draws on (its figure caught where it would be saved)."""
    figures = []
    monkeypatch.setattr(plots_module, "save_figure", lambda fig, path: figures.append(fig) or path)
    plot_tradeoff(rows, tmp_path / "tradeoff.png")
    return figures[0].axes[0]


def with_interval(row, half_width=0.012):
    return {**row, "accuracy_ci_low": row["accuracy"] - half_width, "accuracy_ci_high": row["accuracy"] + half_width}


def band_of(ax):
    """(low, high) in data units of the horizontal band: the one patch spanning the whole width."""
    (band,) = [patch for patch in ax.patches if patch.get_transform().contains_branch_seperately(ax.transData)[1]]
    ys = band.get_path().transformed(band.get_patch_transform()).vertices[:, 1]
    return min(ys), max(ys)


def test_tradeoff_draws_every_interval_per_variant_and_the_control_band_with_a_legend_entry(rows, tmp_path,
                                                                                             monkeypatch):
    control = make_row("finetune", "float32", 0.902, 200_000, 2.0, 0.9)
    scored = [with_interval(row) if not row["error"] else row for row in [*rows, control]]
    ax = drawn_tradeoff(scored, tmp_path, monkeypatch)
    drawn_variants = {"baseline", "pruned", "qat", "finetune"}   # clustered failed: not drawn
    bars = [container for container in ax.containers if isinstance(container, ErrorbarContainer)]
    assert len(bars) == len(drawn_variants)
    assert band_of(ax) == pytest.approx((89.0, 91.4))   # finetune-float32's interval, in percent
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "95 % interval" in labels and any(text.startswith("finetune-float32 95 % interval") for text in labels)


def test_without_a_control_the_band_is_baseline_float32s_interval_and_rows_without_intervals_draw_no_bars(
        rows, tmp_path, monkeypatch):
    scored = [with_interval(rows[0], 0.02), *rows[1:]]
    ax = drawn_tradeoff(scored, tmp_path, monkeypatch)
    assert len([c for c in ax.containers if isinstance(c, ErrorbarContainer)]) == 1
    assert band_of(ax) == pytest.approx((88.0, 92.0))
    ax = drawn_tradeoff(rows, tmp_path, monkeypatch)
    assert not ax.containers and not ax.patches


def test_the_report_names_each_quantized_files_worst_tensors_and_blames_them_for_a_real_loss(rows, confusions,
                                                                                          tmp_path):
    rows[3].update(significant_control=True, accuracy_delta_control_pp=-3.0)     # pruned-int8 lost accuracy
    errors = {name: [{"tensor": f"{name}/t{k}", "snr_db": snr, "cosine": 0.99, "relative_error": 0.1}
                     for k, snr in enumerate((30.0, 12.5, None, 20.0))]             # t2: silent in both files
              for name in ("baseline-int8", "pruned-int8")}
    allocation = {"target_gzip_bytes": 20_000, "float32_gzip_bytes": 90_000, "predicted_gzip_bytes": 19_000,
                  "gzip_bytes": 19_500, "meets_target": True, "predicted_val_loss_pp": 0.4, "val_loss_pp": 0.6,
                  "layers": [{"scope": "m/dense/MatMul;m/dense/Relu", "precision": "int4", "val_loss_pp": 0.4,
                              "gzip_delta_bytes": -70_000, "tried": {
                                  "int4": {"val_loss_pp": 0.4, "gzip_delta_bytes": -70_000},
                                  "float32": {"val_loss_pp": 0.0, "gzip_delta_bytes": 0}}}]}
    text = write_report(rows, confusions, tmp_path, title="t", config_summary={}, tensor_errors=errors,
                        allocations={"pruned-mixed": allocation}).read_text()
    section = text[text.index("## Per-tensor quantization error"):]
    def cells(table: str, first: str) -> list[str]:
        line = next(line for line in table.splitlines() if line.startswith(f"| {first} "))
        return [cell.strip() for cell in line.strip("|").split("|")]

    assert cells(section, "pruned-int8") == ["pruned-int8", "pruned-int8/t1 12.5", "pruned-int8/t3 20.0",
                                             "pruned-int8/t0 30.0"]   # lowest SNR first; the silent one left out
    assert "- pruned-int8 loses accuracy beyond the control's interval: look first at pruned-int8/t1 (12.5 dB)" in section
    assert "- baseline-int8 loses" not in section
    mixed = text[text.index("## Per-layer bit allocation"):]
    assert "19.0 KB gzipped against a target of 19.5 KB (met; the sums said 18.6 KB)" in mixed
    assert cells(mixed, "m/dense/MatMul") == ["m/dense/MatMul", "int4", "+0.40 pp, -68.4 KB", "+0.00 pp, +0.0 KB"]
