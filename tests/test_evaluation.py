"""The evaluate stage on hand-made files: every figure per file, ratios, and bad files reported, not fatal early."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tf_keras as keras
from omegaconf import OmegaConf

from compresslab import data, tflite
from compresslab.errors import UserError

REPO = Path(__file__).resolve().parents[1]
EVALUATE = {"name": "default", "threads": [1, 2], "positive_class": "fire", "warmup_runs": 1, "min_runs": 3,
            "min_seconds": 0.01, "measure_memory": False}


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
    """A project folder with prepared data, three good files and the params evaluate reads."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rng = np.random.default_rng(0)
    splits = {name: ((rng.random((12, 8, 8, 1)) * 255).astype(np.uint8), np.arange(12) % 2)
              for name in data.SPLITS}
    data.save_prepared(Path("data/prepared"), splits, ["fire", "no_fire"], {"image_size": 8, "channels": 1})
    model = tiny_model(8)
    x = data.load_split("data/prepared", "train")[0]
    out = Path("models/tflite")
    for mode in ("float32", "int8"):
        tflite.write_atomically(tflite.convert(model, mode, representative=x), out / f"baseline-{mode}.tflite")
    tflite.write_atomically(tflite.convert(tiny_model(10), "float32"), out / "pruned-float32.tflite")
    OmegaConf.save(OmegaConf.create({
        "seed": 1, "data": {"name": "t", "image_size": 8, "channels": 1}, "model": {"name": "firenet"},
        "prune": {"schedule": "polynomial", "final_sparsity": 0.5, "target_sparsity": None, "layers": "all"},
        "quantize": {"layers": "all"}, "cluster": {"number_of_clusters": 8, "layers": "all"},
        "evaluate": EVALUATE}), "params.yaml")
    return tmp_path


def test_bad_files_are_reported_and_fail_the_stage_at_the_end(workspace):
    Path("models/tflite/cqat-int8.tflite").write_bytes(b"TFL3 this is not a flatbuffer")
    stage = load_stage("evaluate")
    with pytest.raises(UserError, match=r"2 file\(s\) could not be evaluated: cqat-int8, pruned-float32"):
        stage.run(OmegaConf.load("params.yaml"))
    rows = pd.read_csv("reports/variants.csv").set_index(["variant", "mode"])
    assert rows.loc[("baseline", "float32"), "accuracy"] >= 0 and pd.isna(rows.loc[("baseline", "int8"), "error"])
    assert "shape (10, 10, 1)" in rows.loc[("pruned", "float32"), "error"]
    assert rows.loc[("cqat", "int8"), "error"]
    report = Path("reports/report.md").read_text()
    assert "cqat-int8" in report and "pruned-float32" in report


def test_every_figure_per_file_and_ratios_against_the_float32_baseline(workspace):
    Path("models/tflite/pruned-float32.tflite").unlink()
    rows = load_stage("evaluate").run(OmegaConf.load("params.yaml"))
    by_file = {f"{r['variant']}-{r['mode']}": r for r in rows}
    float32, int8 = by_file["baseline-float32"], by_file["baseline-int8"]
    assert float32["gzip_ratio"] == 1.0 and float32["accuracy_delta_pp"] == 0.0 and float32["latency_ratio"] == 1.0
    assert int8["gzip_ratio"] == pytest.approx(int8["gzip_bytes"] / float32["gzip_bytes"])
    assert int8["file_bytes"] < float32["file_bytes"]
    for row in rows:
        assert row["parameters"] == 6 * 6 * 4 * 2 + 2 + 9 * 4 + 4 and row["macs"] == 6 * 6 * 4 * 9 + 144 * 2
        assert row["positive_class"] == "fire" and 0 <= row["positive_recall"] <= 1
        for threads in (1, 2):
            assert row[f"latency_median_ms_t{threads}"] > 0 and row[f"fps_t{threads}"] > 0
    metrics = pd.read_json("reports/metrics.json")
    assert set(metrics.columns) == {"baseline"}
    assert Path("reports/plots/confusion.csv").read_text().startswith("actual,predicted")


def test_an_empty_thread_list_is_refused_before_any_file_runs(workspace):
    params = OmegaConf.load("params.yaml")
    params.evaluate.threads = []
    with pytest.raises(UserError, match="evaluate.threads"):
        load_stage("evaluate").run(params)
    assert not Path("reports/variants.csv").exists()
