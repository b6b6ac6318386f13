"""Converting Keras models to TFLite: every mode, QAT, determinism, errors, calibration and atomic writes."""

import compresslab  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from compresslab.errors import UserError
from compresslab.tflite.converter import (MODES, ConversionError, calibration_samples, convert, converter_reason,
                                          exported_model)
from compresslab.tflite.flatbuffer import TYPE_NAMES, op_name, read_model, stored_tensor
from compresslab.tflite.runtime import predict

CLASSES = 4


def quadrant_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """16x16 noise images whose class is the quadrant holding a bright square: learnt in a few epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.uniform(0.0, 0.3, (n, 16, 16, 1)).astype(np.float32)
    for i, label in enumerate(y):
        row, col = divmod(int(label), 2)
        x[i, row * 8 + 2:row * 8 + 6, col * 8 + 2:col * 8 + 6, 0] += 0.7
    return x, y


def tiny_classifier() -> keras.Model:
    return keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(CLASSES, activation="softmax", name="scores"),
    ], name="tiny")


@pytest.fixture(scope="module")
def data():
    return quadrant_images(256, seed=0)


@pytest.fixture(scope="module")
def model(data):
    keras.utils.set_random_seed(0)
    model = tiny_classifier()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(*data, epochs=4, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def samples(data):
    return calibration_samples(data[0], 64, seed=0)


@pytest.fixture(scope="module")
def files(model, samples):
    return {mode: convert(model, mode, representative=samples) for mode in MODES}


@pytest.fixture(scope="module")
def qat_model(data):
    keras.utils.set_random_seed(0)
    qat = tfmot.quantization.keras.quantize_model(tiny_classifier())
    qat.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    qat.fit(*data, epochs=1, batch_size=32, verbose=0)
    return qat


def interpreter(data: bytes) -> Interpreter:
    interp = Interpreter(model_content=data, num_threads=1)
    interp.allocate_tensors()
    return interp


def stored_types(data: bytes) -> dict[str, tuple[str, str | None]]:
    """{op name + position: (stored kernel type, stored bias type or None)} of the weighted ops."""
    model, _ = read_model(data)
    graph = model.subgraphs[0]
    producers = {int(out): op for op in graph.operators for out in op.outputs}
    found = {}
    for position, op in enumerate(graph.operators):
        name = op_name(model, op)
        if name in ("CONV_2D", "FULLY_CONNECTED"):
            kernel, bias = (stored_tensor(model, graph, producers, op, slot) for slot in (1, 2))
            found[f"{name}#{position}"] = (TYPE_NAMES[kernel.type], bias and TYPE_NAMES[bias.type])
    return found


def test_each_mode_stores_the_weights_in_its_type(files):
    kernel_types = {mode: sorted({kernel for kernel, _ in stored_types(data).values()})
                    for mode, data in files.items()}
    assert kernel_types == {"float32": ["FLOAT32"], "float16": ["FLOAT16"], "int8": ["INT8"],
                            # dynamic range leaves tensors under 1024 elements (the 36-weight conv and
                            # the 128-weight output layer) in float32; the 2048-weight hidden one is int8
                            "dynamic": ["FLOAT32", "INT8"],
                            # the LiteRT quantizer takes every weighted layer, whatever its size
                            "int4": ["INT4"], "int8_weights": ["INT8"]}
    assert sorted(kernel for kernel, _ in stored_types(files["dynamic"]).values()).count("INT8") == 1
    for mode, data in files.items():
        inp = interpreter(data).get_input_details()[0]
        assert inp["dtype"] == np.float32, mode  # float I/O unless int8_io asks otherwise


def test_file_sizes_follow_the_weight_types(files):
    sizes = {mode: len(data) for mode, data in files.items()}
    assert sizes["int8"] < 0.4 * sizes["float32"]
    assert 0.45 < sizes["float16"] / sizes["float32"] < 0.65  # halved weights plus fixed graph overhead
    assert sizes["dynamic"] < sizes["float16"]
    assert sizes["int4"] < sizes["int8_weights"] < sizes["float16"]


def test_low_bit_files_predict_close_to_keras_and_read_back_every_weight(model, files, data):
    """int4 and weight-only int8 come from the float32 file (the LiteRT quantizer): same parameters, packed."""
    from compresslab.tflite.flatbuffer import weight_stats, unpack_int4

    expected = model.predict(data[0], verbose=0)
    for mode, closest in (("int8_weights", 0.02), ("int4", 0.25)):
        got = predict(interpreter(files[mode]), data[0], batch_size=32)
        assert np.abs(got - expected).max() < closest, mode
        assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.9, mode
        assert weight_stats(files[mode])["parameters"] == weight_stats(files["float32"])["parameters"], mode
    # Two values a byte, the low nibble first, two's complement: 0x8F holds -1 then -8.
    assert unpack_int4(bytes([0x8F, 0x07]), 3).tolist() == [-1, -8, 7]


def test_float32_file_predicts_like_keras(model, files, data):
    expected = model.predict(data[0], verbose=0)
    got = predict(interpreter(files["float32"]), data[0], batch_size=32)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("int8_io", [False, True])
def test_int8_file_predicts_close_to_keras(model, files, samples, data, int8_io):
    expected = model.predict(data[0], verbose=0)
    assert np.mean(expected.argmax(1) == data[1]) > 0.9  # the model learnt the task: margins are real
    file = convert(model, "int8", representative=samples, int8_io=True) if int8_io else files["int8"]
    got = predict(interpreter(file), data[0])
    assert np.abs(got - expected).max() < 0.02  # a few output steps of 1/256
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.95


def test_int8_io_gives_int8_input_and_output(model, samples):
    interp = interpreter(convert(model, "int8", representative=samples, int8_io=True))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert (inp["dtype"], out["dtype"]) == (np.int8, np.int8)
    assert inp["quantization"][0] > 0  # a scale to quantize inputs with
    float_file = interpreter(convert(model, "float16", int8_io=True))  # float modes ignore int8_io
    assert float_file.get_input_details()[0]["dtype"] == np.float32


@pytest.mark.parametrize("mode", MODES)
def test_conversion_repeats_byte_for_byte(model, samples, files, mode):
    assert convert(model, mode, representative=samples) == files[mode]


def keras_saved_model(model, folder) -> Path:
    """`model` saved as `TFLiteConverter.from_keras_model` saves it: every layer's call traced."""
    tf.saved_model.save(model, str(folder), options=tf.saved_model.SaveOptions(save_debug_info=True))
    return Path(folder)


def test_the_signature_alone_converts_every_mode_to_the_same_bytes_as_keras_own_saved_model(model, qat_model, samples,
                                                                                           files, tmp_path):
    """`convert` saves the serving signature alone (`exported_model`); the SavedModel Keras writes itself, every
    layer traced (what `from_keras_model` converts), gives the same bytes in every mode."""
    with exported_model(model) as exported:
        assert exported is not None and (exported / "saved_model.pb").is_file()
    keras_path = keras_saved_model(model, tmp_path / "keras")
    for mode in MODES:
        assert convert(model, mode, representative=samples, exported=keras_path) == files[mode], mode
    keras_qat = keras_saved_model(qat_model, tmp_path / "keras-qat")
    assert convert(qat_model, "int8", qat=True, exported=keras_qat) == convert(qat_model, "int8", qat=True)


def test_stages_never_load_keras_3():
    """TFMOT and the TFLite converter probe for Keras 3 (a second of start-up in every stage): refused."""
    code = ("import compresslab.models.training_stage, compresslab.tflite.converter, sys, tensorflow as tf; "
            "from compresslab.models.zoo import build_model; from omegaconf import OmegaConf; "
            "m = build_model(OmegaConf.create({'name': 'mlp', 'hidden_units': [8], 'dropout': 0.0}), (8, 8, 1), 2); "
            "compresslab.tflite.converter.convert(m, 'dynamic'); "
            "import tensorflow_model_optimization as tfmot; tfmot.sparsity.keras.prune_low_magnitude(m); "
            "print(sys.modules.get('keras'), tf.keras.__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["None", "tf_keras.api._v2.keras"]
    refused = subprocess.run([sys.executable, "-c", "import compresslab, keras"], capture_output=True, text=True)
    assert "compresslab runs Keras 2 (tf_keras) only" in refused.stderr


def fresh_environment(**extra) -> dict:
    """This process's environment as a user's shell would have it: none of what importing compresslab set."""
    ours = ("TF_CPP_MIN_LOG_LEVEL", "COMPRESSLAB_QUIET_TF", "TF_USE_LEGACY_KERAS")
    return {**{key: value for key, value in os.environ.items() if key not in ours}, **extra}


def test_tensorflow_start_up_lines_stay_out_of_the_log_unless_the_user_asks_for_them():
    code = "import compresslab, tensorflow as tf; tf.constant(1) + 1; print('ran')"
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=fresh_environment())
    assert quiet.returncode == 0 and quiet.stdout.strip() == "ran", quiet.stderr[-3000:]
    noise = [line for line in quiet.stderr.splitlines() if any(word in line for word in ("cuInit", "oneDNN", "cuda"))]
    assert noise == []
    # A process compresslab started (dvc, a stage) inherits its setting and stays quiet too ...
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=fresh_environment(TF_CPP_MIN_LOG_LEVEL="2", COMPRESSLAB_QUIET_TF="1"))
    assert "oneDNN" not in child.stderr and child.returncode == 0
    # ... while the user's own TF_CPP_MIN_LOG_LEVEL wins, and with it every line TensorFlow prints.
    chatty = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=fresh_environment(TF_CPP_MIN_LOG_LEVEL="0"))
    assert "oneDNN custom operations are on" in chatty.stderr and chatty.returncode == 0


def test_a_process_that_loaded_keras_3_before_compresslab_stops_in_one_line():
    code = "import tensorflow as tf; tf.keras.Sequential; import compresslab; print('trained with Keras 3')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=fresh_environment())
    assert done.returncode == 2 and "trained" not in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("error: Keras 3 was imported before compresslab: "
                                                           "import compresslab first")
    assert "Traceback" not in done.stderr


def test_qat_model_converts_to_int8_weights(qat_model, data):
    file = convert(qat_model, "int8", qat=True)
    assert set(stored_types(file).values()) == {("INT8", "INT32")}
    assert interpreter(file).get_input_details()[0]["dtype"] == np.float32
    assert convert(qat_model, "int8", qat=True) == file
    with_io = interpreter(convert(qat_model, "int8", qat=True, int8_io=True))
    assert with_io.get_input_details()[0]["dtype"] == np.int8
    expected = qat_model.predict(data[0][:64], verbose=0)
    assert np.mean(predict(interpreter(file), data[0][:64]).argmax(1) == expected.argmax(1)) >= 0.9


def test_qat_flag_must_match_the_model(model, qat_model, samples):
    with pytest.raises(UserError, match="holds QAT quantize wrappers but qat=False"):
        convert(qat_model, "int8", representative=samples)
    with pytest.raises(UserError, match="holds no QAT quantize wrappers but qat=True"):
        convert(model, "int8", qat=True)
    with pytest.raises(UserError, match="QAT-trained model converts to mode int8 only"):
        convert(qat_model, "float16", qat=True)


def test_pruning_and_clustering_wrappers_must_be_stripped():
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        tiny_classifier(), pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
    clustered = tfmot.clustering.keras.cluster_weights(
        tiny_classifier(), number_of_clusters=4,
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.LINEAR)
    for wrapped in (pruned, clustered):
        with pytest.raises(UserError, match="strip them"):
            convert(wrapped, "float32")
    assert convert(tfmot.sparsity.keras.strip_pruning(pruned), "float32")


@pytest.mark.parametrize("mode, kwargs, message", [
    ("int3", {}, "unknown TFLite mode 'int3'"),
    ("int8", {}, "mode int8 needs representative samples"),
    ("int8", {"representative": np.zeros((4, 8, 8, 1), np.float32)}, r"have shape \(8, 8, 1\)"),
    ("int8", {"representative": np.zeros((0, 16, 16, 1), np.float32)}, "non-empty array"),
])
def test_bad_options_are_user_errors(model, mode, kwargs, message):
    with pytest.raises(UserError, match=message):
        convert(model, mode, **kwargs)


def test_converter_failure_is_one_line_and_the_same_for_every_mode():
    inp = keras.Input((4, 4))
    determinant = keras.layers.Lambda(lambda t: tf.expand_dims(tf.linalg.det(t), -1))(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(determinant))
    reasons = []
    for mode in ("float32", "dynamic"):
        with pytest.raises(ConversionError) as caught:
            convert(model, mode)
        reasons.append(str(caught.value))
    assert reasons[0] == reasons[1]
    assert "MatrixDeterminant" in reasons[0] and "\n" not in reasons[0]
    assert "/" not in reasons[0] and "__inference" not in reasons[0]


def test_converter_reason_keeps_the_first_error_line():
    message = ("Could not translate MLIR to FlatBuffer./tmp/x.py:11:1: error: 'tf.Foo' op is odd\n"
               "    try: c.convert()\n^\n<unknown>:0: error: failed while converting: 'main'\n")
    assert converter_reason(RuntimeError(message)) == "'tf.Foo' op is odd"
    assert converter_reason(RuntimeError("\n  Node number 1 (SUB) failed to prepare.\nmore")) == \
        "Node number 1 (SUB) failed to prepare."
    assert converter_reason(ValueError("")) == "ValueError"


def test_calibration_samples_are_a_fixed_ordered_choice():
    x = np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1)
    first = calibration_samples(x, 10, seed=3)
    assert first.shape == (10, 1, 1, 1) and first.dtype == np.float32
    np.testing.assert_array_equal(first, calibration_samples(x, 10, seed=3))
    assert np.all(np.diff(first.ravel()) > 0)  # sorted indices, no repeats
    assert not np.array_equal(first, calibration_samples(x, 10, seed=4))
    np.testing.assert_array_equal(calibration_samples(x, 500, seed=3), x)
    with pytest.raises(UserError, match="positive integer"):
        calibration_samples(x, 0, seed=3)


def test_mixed_allocates_a_precision_per_layer_within_the_target_and_says_whether_the_sums_held(model, files, data):
    from compresslab.tflite import allocation
    from compresslab.tflite.flatbuffer import gzip_size

    images, labels = quadrant_images(128, seed=1)   # the "validation" split: not the training images
    float_gzip, int4_gzip = gzip_size(files["float32"]), gzip_size(files["int4"])
    target = (float_gzip + int4_gzip) // 2
    lines = []
    mixed, record = allocation.allocate(files["float32"], ["int4", "int8", "float32"],
                                        allocation.Target(bytes=target, ratio=None), images, labels, lines.append)
    assert gzip_size(mixed) == record["gzip_bytes"] <= target == record["target_gzip_bytes"] and record["meets_target"]
    assert [layer["precision"] for layer in record["layers"]] != ["int4"] * 3   # the budget buys precision back
    assert len(record["layers"]) == 3 and len(lines) == 3 * 3   # conv, hidden, scores; each tried at 3 precisions
    assert all(set(layer["tried"]) == {"int4", "int8", "float32"} for layer in record["layers"])
    assert {"predicted_gzip_bytes", "predicted_val_loss_pp", "val_loss_pp"} <= set(record)
    expected = model.predict(data[0], verbose=0).argmax(1)
    assert np.mean(predict(interpreter(mixed), data[0]).argmax(1) == expected) >= 0.9
    again, _ = allocation.allocate(files["float32"], ["int4", "int8", "float32"],
                                   allocation.Target(bytes=target, ratio=None), images, labels, lines.append)
    assert again == mixed   # the same bytes every time

    for bad, message in ((len(files["float32"]), "no smaller than the float32 file"), (100, "out of reach")):
        with pytest.raises(UserError, match=message):
            allocation.allocate(files["float32"], ["int4", "float32"], allocation.Target(bytes=bad, ratio=None),
                                images, labels)


def test_per_tensor_error_ranks_the_int4_file_below_the_weight_only_int8_one(files, data, tmp_path):
    from compresslab.tflite import tensor_error

    for mode in ("float32", "int4", "int8_weights", "int8"):
        (tmp_path / f"{mode}.tflite").write_bytes(files[mode])
    compared = {mode: tensor_error.compare(tmp_path / "float32.tflite", tmp_path / f"{mode}.tflite", data[0])
                for mode in ("float32", "int4", "int8_weights", "int8")}
    names = [error["tensor"] for error in compared["float32"]]
    assert len(names) >= 5 and not any("Const" in name or "ReadVariableOp" == name for name in names)
    assert all(error["snr_db"] > 100 and error["cosine"] > 0.999999 for error in compared["float32"])  # itself
    assert {error["tensor"] for error in compared["int4"]} == set(names)   # the quantizer keeps every name
    int4, int8_weights = (tensor_error.worst(compared[mode], 1)[0]["snr_db"] for mode in ("int4", "int8_weights"))
    assert 5 < int4 < int8_weights   # 4-bit weights lose more than 8-bit ones, and both stay close
    assert compared["int8"] and all(e["relative_error"] < 0.5 for e in compared["int8"])   # dequantized right
