"""Latency and peak memory of real .tflite files converted from a tiny Keras model."""

import compresslab  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from compresslab.errors import UserError
from compresslab.tflite import timing_core
from compresslab.tflite.timing import (interleaved_ratio, latency_by_threads, load_interpreter,
                                          make_input, measure_latency, peak_memory, peak_memory_mb)

SHAPE = (16, 16, 3)
FAST = {"warmup": 2, "min_runs": 20, "min_seconds": 0.05}
EXPECTED_KEYS = {"median_ms", "p25_ms", "p75_ms", "p90_ms", "mean_ms", "std_ms", "runs", "fps", "threads"}


def tiny_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.layers.Input(SHAPE),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(2, activation="softmax"),
    ])


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def float_tflite(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tflite") / "float.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


@pytest.fixture(scope="module")
def int8_tflite(model, tmp_path_factory):
    """Full-integer model whose input tensor is int8, so samples must be quantized to feed it."""
    def representative():
        rng = np.random.default_rng(1)
        for _ in range(8):
            yield [rng.random((1, *SHAPE), dtype=np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    path = tmp_path_factory.mktemp("tflite") / "int8.tflite"
    with warnings.catch_warnings():
        # The converter asks for input statistics it does not need when inputs are quantized itself.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        path.write_bytes(converter.convert())
    return path


def test_latency_at_one_and_two_threads(float_tflite):
    results = latency_by_threads(float_tflite, [1, 2], **FAST)
    assert list(results) == [1, 2]
    for threads, result in results.items():
        assert set(result) == EXPECTED_KEYS
        assert result["threads"] == threads
        assert result["median_ms"] > 0
        assert result["p25_ms"] <= result["median_ms"] <= result["p75_ms"] <= result["p90_ms"]
        assert result["runs"] >= FAST["min_runs"]
        assert result["fps"] == pytest.approx(1000.0 / result["median_ms"])
        assert result["std_ms"] >= 0


def test_runs_continue_until_min_seconds(float_tflite):
    # A tiny model takes well under a millisecond, so 0.2 s of timed work needs far more than 5 runs.
    result = measure_latency(float_tflite, 1, warmup=0, min_runs=5, min_seconds=0.2, max_runs=100_000)
    assert result["runs"] > 5
    assert result["runs"] * result["mean_ms"] >= 200.0 * 0.999


def test_runs_are_capped_at_max_runs(float_tflite):
    result = measure_latency(float_tflite, 1, warmup=0, min_runs=10, min_seconds=60.0, max_runs=30)
    assert result["runs"] == 30


def test_int8_input_is_fed_a_quantized_real_sample(int8_tflite):
    sample = np.random.default_rng(2).random(SHAPE, dtype=np.float32)
    result = measure_latency(int8_tflite, 1, input_sample=sample, **FAST)
    assert result["median_ms"] > 0


def test_make_input_quantizes_to_the_tensor_scale_and_zero_point(int8_tflite):
    detail = Interpreter(model_path=str(int8_tflite)).get_input_details()[0]
    scale, zero_point = detail["quantization"]
    assert detail["dtype"] == np.int8 and scale > 0
    sample = np.linspace(0.0, 1.0, int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE)
    array = make_input(detail, sample)
    assert array.dtype == np.int8
    assert tuple(array.shape) == tuple(detail["shape"])
    # Dequantizing gives back the sample to within half a step.
    restored = (array.astype(np.float32) - zero_point) * scale
    assert np.max(np.abs(restored.reshape(SHAPE) - sample)) <= scale / 2 + 1e-6


def test_make_input_noise_is_deterministic_and_in_range(float_tflite):
    detail = Interpreter(model_path=str(float_tflite)).get_input_details()[0]
    first, second = make_input(detail), make_input(detail)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    assert 0.0 <= first.min() and first.max() < 1.0


def test_sample_of_wrong_size_is_a_user_error(float_tflite):
    with pytest.raises(UserError, match="does not fit model input"):
        measure_latency(float_tflite, 1, input_sample=np.zeros((8, 8, 3)), **FAST)


@pytest.mark.parametrize("threads, match", [([], "empty"), ([1, 0], r"\[0\]"), ([-2], r"\[-2\]"),
                                            ([1.5], r"\[1\.5\]")])
def test_bad_thread_lists_are_user_errors(float_tflite, threads, match):
    with pytest.raises(UserError, match=match):
        latency_by_threads(float_tflite, threads, **FAST)


def test_bad_schedule_and_missing_file_are_user_errors(float_tflite, tmp_path):
    with pytest.raises(UserError, match="max_runs >= min_runs"):
        measure_latency(float_tflite, 1, min_runs=10, max_runs=5)
    with pytest.raises(UserError, match="no such TFLite file"):
        measure_latency(tmp_path / "missing.tflite", 1)


def test_a_file_that_is_not_a_model_is_a_user_error(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(UserError, match="cannot load TFLite model"):
        load_interpreter(junk, 1)
    # The child process reports the same error as one line, re-raised here.
    with pytest.raises(UserError, match="cannot load TFLite model"):
        peak_memory_mb(junk)


def test_peak_memory_of_model_and_baseline(float_tflite):
    sample = np.random.default_rng(3).random(SHAPE, dtype=np.float32)
    result = peak_memory(float_tflite, input_sample=sample)
    assert result["peak_rss_mb"] > 0
    assert 0 < result["baseline_rss_mb"] <= result["peak_rss_mb"] + 1.0  # 1 MB of allowed noise
    # Measured in the child alone: not inflated by this process, which holds TensorFlow.
    assert result["peak_rss_mb"] < 300
    assert result["model_rss_mb"] == pytest.approx(max(0.0, result["peak_rss_mb"] - result["baseline_rss_mb"]))


def test_memory_child_does_not_import_tensorflow(float_tflite):
    # TensorFlow would add hundreds of MB and hide the model's cost; the child must stay on LiteRT alone.
    done = subprocess.run([sys.executable, timing_core.__file__, "--memory", str(float_tflite)],
                          capture_output=True, text=True, check=True)
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["tensorflow_imported"] is False
    assert report["max_rss_mb"] < 300


def test_a_6_mb_model_costs_more_memory_than_a_tiny_one(float_tflite, tmp_path):
    # 768 x 2048 float weights = 6 MB; the runtime maps the file and XNNPACK packs its own copy.
    big = keras.Sequential([keras.layers.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(2048),
                            keras.layers.Dense(2, activation="softmax")])
    path = tmp_path / "big.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(big).convert())
    assert peak_memory(path)["model_rss_mb"] > peak_memory(float_tflite)["model_rss_mb"] + 5.0


def test_interleaved_ratio_of_a_file_against_itself_is_one_and_a_bigger_file_is_slower(float_tflite, tmp_path):
    same = interleaved_ratio(float_tflite, float_tflite, 1, rounds=6, runs_per_round=5, warmup=2)
    assert same["rounds"] == 6 and same["ratio_p25"] <= same["ratio"] <= same["ratio_p75"]
    assert 0.5 < same["ratio"] < 2.0
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(256, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(256, 3, padding="same", activation="relu")(x)
    bigger = tmp_path / "bigger.tflite"
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    bigger.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    slower = interleaved_ratio(bigger, float_tflite, 1, rounds=6, runs_per_round=5, warmup=2)
    assert slower["ratio"] > 3  # far more MACs: the ratio must show it, whatever the machine's speed
    with pytest.raises(UserError, match="rounds"):
        interleaved_ratio(float_tflite, float_tflite, 1, rounds=0)


def test_a_cut_after_each_operator_computes_what_the_model_computes_up_to_it(float_tflite, int8_tflite):
    from compresslab.tflite import profile, runtime

    sample = np.random.default_rng(3).random((1, *SHAPE), dtype=np.float32)
    for path in (float_tflite, int8_tflite):
        whole = runtime.load_interpreter(path)
        operators = [node for node in whole._get_ops_details() if node["op_name"] != "DELEGATE"]
        cuts = profile.cut_models(path)
        assert len(cuts) == len(operators)
        outputs = []
        for content in cuts.values():
            cut = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
            cut.allocate_tensors()
            cut.set_tensor(cut.get_input_details()[0]["index"], make_input(cut.get_input_details()[0], sample))
            cut.invoke()
            outputs.append(cut.get_tensor(cut.get_output_details()[0]["index"]))
        whole.set_tensor(whole.get_input_details()[0]["index"], make_input(whole.get_input_details()[0], sample))
        whole.invoke()
        np.testing.assert_array_equal(outputs[-1], whole.get_tensor(whole.get_output_details()[0]["index"]))
        shapes = {detail["index"]: tuple(detail["shape"]) for detail in whole.get_tensor_details()}
        assert [tuple(o.shape) for o in outputs] == [shapes[int(node["outputs"][0])] for node in operators]


def test_the_operator_profile_splits_the_latency_by_operator_and_type(float_tflite, int8_tflite):
    from compresslab.tflite import profile, runtime

    for path in (float_tflite, int8_tflite):
        found = profile.operator_profile(path, threads=1, seconds=0.05)
        operators = [node["op_name"] for node in runtime.load_interpreter(path)._get_ops_details()
                     if node["op_name"] != "DELEGATE"]
        assert [row["op"] for row in found["operators"]] == operators and found["rounds"] >= profile.MIN_ROUNDS
        assert all(row["ms"] >= 0 for row in found["operators"])
        by_type = {entry["op"]: entry for entry in found["by_type"]}
        assert set(by_type) == set(operators) and sum(e["count"] for e in by_type.values()) == len(operators)
        assert [e["ms"] for e in found["by_type"]] == sorted((e["ms"] for e in found["by_type"]), reverse=True)
        assert sum(e["ms"] for e in by_type.values()) == pytest.approx(sum(r["ms"] for r in found["operators"]),
                                                                       abs=1e-4)
        assert by_type["CONV_2D"]["ms"] > 0 and 0.0 < found["total_ms"]
        delegated = set(runtime.delegation(runtime.load_interpreter(path))["delegated_indices"])
        assert {row["index"] for row in found["operators"] if row["delegated"]} == delegated
        assert 0.0 <= found["delegated_share"] <= 1.0


def test_a_float16_file_profiles_its_weight_dequantize_as_load_time_work(model, tmp_path):
    from compresslab.tflite import profile

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    path = tmp_path / "float16.tflite"
    path.write_bytes(converter.convert())
    found = profile.operator_profile(path, threads=1, seconds=0.05)
    dequantize = [row for row in found["operators"] if row["op"] == "DEQUANTIZE"]
    assert dequantize and all(row["ms"] == 0.0 for row in dequantize)  # constants: no cut, no per-run time
    assert len(profile.cut_models(path)) == len(found["operators"]) - len(dequantize)
    assert profile.try_profile(tmp_path / "missing.tflite", 1, None, 0.05)["error"]
