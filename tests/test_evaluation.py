"""The per-variant convert and evaluate stages and the report stage, on hand-made models and files: every figure
per file, statistics against the baseline and the control, bad files reported (not fatal early), and
evaluation that never imports TensorFlow."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tf_keras as keras
from omegaconf import OmegaConf

from compresslab import paths, variants
from compresslab.data import prepare
from compresslab.data import shards
from compresslab.errors import UserError
from compresslab.models.saving import save_model

REPO = Path(__file__).resolve().parents[1]
EVALUATE = {"name": "default", "threads": [1, 2], "positive_class": "fire", "warmup_runs": 1, "min_runs": 3,
            "min_seconds": 0.01, "measure_memory": False, "profile_seconds": 0.05}
TEST_IMAGES = 12


def load_stage(name):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model(size):
    model = keras.Sequential([keras.layers.Input((size, size, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    kernel, _ = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel, np.array([0.1, -0.1])])  # the converter drops all-zero dense biases
    return model


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A project folder with prepared data, the params the stages read, and a tiny float baseline."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rng = np.random.default_rng(0)
    splits = {name: ((rng.random((TEST_IMAGES, 8, 8, 1)) * 255).astype(np.uint8), np.arange(TEST_IMAGES) % 2)
              for name in shards.SPLITS}
    prepare.write_prepared(paths.PREPARED, {name: [split] for name, split in splits.items()}, ["fire", "no_fire"],
                        image_size=8, channels=1)
    save_model(tiny_model(8), paths.keras_model("baseline"))
    OmegaConf.save(OmegaConf.create({
        "seed": 1, "data": {"name": "t", "image_size": 8, "channels": 1}, "model": {"name": "firenet"},
        "prune": {"name": "t", "schedule": "polynomial", "final_sparsity": 0.5, "target_sparsity": None,
                  "frequency": 1, "layers": "all", "epochs": 1, "learning_rate": 0.001},
        "quantize": {"layers": "all"}, "cluster": {"number_of_clusters": 8, "layers": "all"},
        "finetune": {"epochs": 1, "learning_rate": 0.001},
        "convert": {"modes": ["float32", "int8"], "calibration_samples": 4, "int8_io": False, "skip_failed": True},
        "evaluate": EVALUATE}), "params.yaml")
    return tmp_path


def test_convert_writes_each_mode_and_the_keras_predictions(workspace):
    record = load_stage("convert").run(OmegaConf.load("params.yaml"), "baseline")
    assert record["modes"] == ["float32", "int8"] and record["failures"] == {}
    for mode in record["modes"]:
        assert paths.tflite_file("baseline", mode).stat().st_size == record["bytes"][mode]
    assert len(record["keras_predictions"]) == TEST_IMAGES
    assert json.loads(paths.conversion_record("baseline").read_text()) == record
    with pytest.raises(UserError, match="unknown variant 'vgg'"):
        load_stage("convert").run(OmegaConf.load("params.yaml"), "vgg")


def test_evaluate_measures_every_file_of_a_variant_without_tensorflow(workspace):
    load_stage("convert").run(OmegaConf.load("params.yaml"), "baseline")
    probe = ("import runpy, sys; sys.argv = ['stages/evaluate.py', 'baseline']; "
             "runpy.run_path(sys.argv[0])['main'](); "
             "print('tensorflow imported:', any(m.split('.')[0] == 'tensorflow' for m in sys.modules))")
    (workspace / "stages").mkdir()
    (workspace / "stages" / "evaluate.py").write_text((REPO / "stages" / "evaluate.py").read_text())
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=workspace)
    assert done.returncode == 0, done.stderr
    assert "tensorflow imported: False" in done.stdout
    rows = {r["mode"]: r for r in json.loads(paths.evaluation("baseline").read_text())["rows"]}
    assert set(rows) == {"float32", "int8"}
    assert rows["float32"]["keras_agreement"] == 1.0 and rows["int8"]["keras_agreement"] >= 0.5
    for row in rows.values():
        assert len(row["y_pred"]) == TEST_IMAGES
        assert row["parameters"] == 6 * 6 * 4 * 2 + 2 + 9 * 4 + 4 and row["macs"] == 6 * 6 * 4 * 9 + 144 * 2
        for threads in (1, 2):
            assert row[f"latency_median_ms_t{threads}"] > 0 and row[f"fps_t{threads}"] > 0
    assert rows["int8"]["file_bytes"] < rows["float32"]["file_bytes"]
    assert rows["float32"]["xnnpack_partitions"] == 1 and rows["float32"]["operators_outside_xnnpack"] == ""
    assert rows["int8"]["operators_outside_xnnpack"] == "SOFTMAX"  # XNNPACK takes no int8 softmax
    for row in rows.values():  # timed against baseline-float32 in the same process
        assert row["latency_ratio_p25_t1"] <= row["latency_ratio_t1"] <= row["latency_ratio_p75_t1"]
    assert rows["float32"]["latency_ratio_t1"] == 1.0
    # Each file's per-operator profile, at the first thread count: the int8 softmax runs outside XNNPACK.
    profiles = json.loads(paths.evaluation("baseline").read_text())["profiles"]
    assert set(profiles) == {"baseline-float32", "baseline-int8"}
    assert [row["op"] for row in profiles["baseline-int8"]["operators"] if not row["delegated"]] == ["SOFTMAX"]
    assert rows["float32"]["time_in_xnnpack_share"] == profiles["baseline-float32"]["delegated_share"] == 1.0
    # Each file's validation accuracy (what compresslab search decides on) is its own, on the val split.
    from compresslab.tflite import runtime

    val = shards.open_split("val")
    x_val, y_val = next(val.batches(len(val)))
    for row in rows.values():
        predicted = np.argmax(runtime.predict(runtime.load_interpreter(Path(row["file"])), x_val), axis=1)
        assert row["val_accuracy"] == pytest.approx(float(np.mean(predicted == y_val)))


def test_a_broken_file_and_a_failed_conversion_become_error_rows(workspace):
    load_stage("convert").run(OmegaConf.load("params.yaml"), "baseline")
    paths.tflite_file("baseline", "int8").write_bytes(b"TFL3 this is not a flatbuffer")
    record = json.loads(paths.conversion_record("baseline").read_text())
    record["modes"].append("float16")
    record["failures"]["float16"] = "converter said no"
    paths.conversion_record("baseline").write_text(json.dumps(record))
    evaluation = load_stage("evaluate").run(OmegaConf.load("params.yaml"), "baseline")
    rows = {r["mode"]: r for r in evaluation["rows"]}
    assert "error" not in rows["float32"]
    assert "cannot load TFLite model" in rows["int8"]["error"]
    assert rows["float16"]["error"] == "conversion failed: converter said no"
    # Per-tensor errors for the quantized files that ran, none for the broken or missing ones.
    assert set(evaluation["tensor_errors"]) == {f"baseline-{mode}" for mode, row in rows.items()
                                                if mode != "float32" and "error" not in row}


def test_an_unknown_positive_class_is_refused_before_any_file_runs(workspace):
    params = OmegaConf.load("params.yaml")
    params.evaluate.positive_class = "smoke"
    with pytest.raises(UserError, match="evaluate.positive_class='smoke'"):
        load_stage("evaluate").run(params, "baseline")
    params.evaluate.positive_class = "fire"
    params.evaluate.threads = []
    with pytest.raises(UserError, match="evaluate.threads"):
        load_stage("evaluate").run(params, "baseline")


def evaluation_row(variant, mode, correct, **figures):
    """A hand-made evaluate row whose predictions are right on the first `correct` test images."""
    y_true = np.arange(TEST_IMAGES) % 2
    y_pred = np.where(np.arange(TEST_IMAGES) < correct, y_true, 1 - y_true)
    return {"variant": variant, "mode": mode, "file": str(paths.tflite_file(variant, mode)),
            "y_pred": y_pred.tolist(), "keras_agreement": 1.0, "gzip_bytes": figures.get("gzip", 1000),
            "file_bytes": 4000, "sparsity": 0.0, "parameters": 10, "nonzero_parameters": 10, "macs": 100,
            "latency_median_ms_t1": figures.get("ms", 0.1), "latency_median_ms_t2": 0.08, "fps_t1": 10000.0,
            "fps_t2": 12500.0}


def write_evaluations(rows_by_variant):
    for variant in variants.VARIANTS:
        rows = rows_by_variant.get(variant, [])
        paths.evaluation(variant).parent.mkdir(parents=True, exist_ok=True)
        paths.evaluation(variant).write_text(json.dumps({"variant": variant, "rows": rows}))


def test_report_scores_every_file_against_the_baseline_and_the_control(workspace):
    write_evaluations({
        "baseline": [evaluation_row("baseline", "float32", 10), evaluation_row("baseline", "int8", 10, gzip=250)],
        "finetune": [evaluation_row("finetune", "float32", 10), evaluation_row("finetune", "int8", 11)],
        "pruned": [evaluation_row("pruned", "int8", 2, gzip=100),
                   {"variant": "pruned", "mode": "float32", "file": "pruned-float32.tflite",
                    "error": "conversion failed: converter said no"}]})
    with pytest.raises(UserError, match=r"1 file\(s\) could not be evaluated: pruned-float32"):
        load_stage("report").run(OmegaConf.load("params.yaml"))
    table = pd.read_csv("reports/variants.csv").set_index(["variant", "mode"])
    base, int8, pruned = (table.loc[key] for key in [("baseline", "float32"), ("baseline", "int8"), ("pruned", "int8")])
    assert base["test_images"] == TEST_IMAGES and base["accuracy"] == pytest.approx(10 / 12)
    assert base["accuracy_ci_low"] < 10 / 12 < base["accuracy_ci_high"]
    assert int8["gzip_ratio"] == 0.25 and int8["accuracy_delta_pp"] == 0.0 and int8["p_value"] == 1.0
    assert int8["accuracy_delta_control_pp"] == pytest.approx(-100 / 12)  # the control int8 got one more right
    assert not int8["significant_control"]  # one image of twelve is noise
    assert pruned["accuracy_delta_pp"] == pytest.approx(-800 / 12) and pruned["significant"]  # 8 images lost
    assert pruned["baseline_agreement"] == pytest.approx(4 / 12)
    assert pruned["positive_class"] == "fire" and 0 <= pruned["positive_recall"] <= 1
    assert "conversion failed" in table.loc[("pruned", "float32"), "error"]
    report = Path("reports/report.md").read_text()
    assert "-8.33 ns" in report and "-66.67 *" in report and "pruned-float32" in report
    assert "The test split is small" in report and "data.test_fraction" in report
    metrics = json.loads(Path("reports/metrics.json").read_text())
    assert metrics["pruned"]["int8"]["p_value"] < 0.05 and metrics["failed"] == ["pruned-float32"]
    assert Path("reports/plots/confusion.csv").read_text().startswith("actual,predicted")


def test_report_refuses_to_run_when_a_variant_was_not_evaluated(workspace):
    with pytest.raises(UserError, match="no evaluation of baseline"):
        load_stage("report").run(OmegaConf.load("params.yaml"))
