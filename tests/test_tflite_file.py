"""Reading .tflite files: loading errors, input checks, batched prediction, stored-weight figures, gzip."""

import compresslab  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from compresslab.errors import UserError
from compresslab.outputs import write_bytes
from compresslab.tflite.converter import MODES, convert
from compresslab.tflite.flatbuffer import TfliteFileError, gzip_size, weight_stats
from compresslab.tflite.runtime import check_input_shape, delegation, input_details, load_interpreter, predict

L = keras.layers
RNG_SEED = 0


def clearly_nonzero(rng: np.random.Generator, shape) -> np.ndarray:
    """Weights of magnitude 0.5..1 with random signs: no quantization scheme rounds one to zero."""
    return (rng.uniform(0.5, 1.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)


def dense_model(inputs: int, units: int, zero_share: float = 0.0) -> keras.Model:
    """Dense(units) on `inputs` features with non-zero biases and exactly `zero_share` of the kernel zero."""
    rng = np.random.default_rng(RNG_SEED)
    model = keras.Sequential([keras.Input((inputs,)), L.Dense(units, name="dense")], name="dense_model")
    kernel = clearly_nonzero(rng, (inputs, units)).ravel()
    kernel[rng.permutation(kernel.size)[:round(zero_share * kernel.size)]] = 0.0
    model.set_weights([kernel.reshape(inputs, units), rng.uniform(0.1, 0.2, units).astype(np.float32)])
    return model


def conv_model() -> keras.Model:
    keras.utils.set_random_seed(RNG_SEED)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
        L.Flatten(name="flatten"),
        L.Dense(5, activation="softmax", name="scores"),
    ], name="conv_model")


def calibration(shape, n: int = 32) -> np.ndarray:
    return np.random.default_rng(RNG_SEED + 1).random((n, *shape), dtype=np.float32)


@pytest.fixture(scope="module")
def conv_files(tmp_path_factory):
    """The conv model and its float32, int8 (float I/O) and int8 (int8 I/O) files on disk."""
    model, folder = conv_model(), tmp_path_factory.mktemp("conv")
    samples = calibration((8, 8, 1))
    paths = {"float32": folder / "float32.tflite", "int8": folder / "int8.tflite",
             "int8_io": folder / "int8_io.tflite"}
    write_bytes(paths["float32"], convert(model, "float32"))
    write_bytes(paths["int8"], convert(model, "int8", representative=samples))
    write_bytes(paths["int8_io"], convert(model, "int8", representative=samples, int8_io=True))
    return model, paths


# --- loading ----------------------------------------------------------------------------------------

def test_a_good_file_loads(conv_files):
    interp = load_interpreter(conv_files[1]["float32"])
    assert interp.get_input_details()[0]["shape"].tolist() == [1, 8, 8, 1]


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "random"])
def test_damaged_files_raise_one_line_naming_the_file(conv_files, tmp_path, damage):
    good = conv_files[1]["float32"].read_bytes()
    path = tmp_path / f"{damage}.tflite"
    content = {"missing": None, "empty": b"", "truncated": good[:len(good) // 2],
               "random": np.random.default_rng(1).bytes(len(good))}[damage]
    if content is not None:
        path.write_bytes(content)
    for read in (load_interpreter, weight_stats):
        with pytest.raises(TfliteFileError) as caught:
            read(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message
        assert isinstance(caught.value, UserError)  # printed as one line by the stage wrapper


def test_truncated_bytes_are_refused_wherever_the_cut(conv_files):
    good = conv_files[1]["int8"].read_bytes()
    for cut in (7, 200, len(good) // 2, len(good) - 1):
        with pytest.raises(TfliteFileError, match="TFLite"):
            weight_stats(good[:cut])


# --- inputs -----------------------------------------------------------------------------------------

def test_input_details_give_shape_type_and_quantization(conv_files):
    paths = conv_files[1]
    details = input_details(paths["float32"])
    assert details.pop("name").startswith("serving_default_input")  # numbered by Keras' Input count
    assert details == {"shape": (None, 8, 8, 1), "dtype": "float32", "scale": 0.0, "zero_point": 0}
    quantized = input_details(paths["int8_io"])
    assert quantized["dtype"] == "int8" and quantized["scale"] > 0
    assert -128 <= quantized["zero_point"] <= 127


def test_input_shape_mismatch_names_both_shapes(conv_files):
    interp = load_interpreter(conv_files[1]["float32"])
    check_input_shape(interp, (8, 8, 1))
    with pytest.raises(TfliteFileError, match=r"shape \(8, 8, 1\).*shape \(16, 16, 3\)"):
        check_input_shape(interp, (16, 16, 3))
    with pytest.raises(TfliteFileError, match="samples of shape"):
        predict(interp, np.zeros((3, 8, 8), np.float32))


# --- prediction -------------------------------------------------------------------------------------

def test_predict_matches_keras_for_any_batch_size(conv_files):
    model, paths = conv_files
    x = np.random.default_rng(2).random((37, 8, 8, 1), dtype=np.float32)  # 37: partial last batches
    expected = model.predict(x, verbose=0)
    interp = load_interpreter(paths["float32"])
    for batch_size in (1, 8, 64):
        got = predict(interp, x, batch_size=batch_size)
        assert got.shape == (37, 5) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert interp.get_input_details()[0]["shape"][0] == 1  # left as loaded, for latency timing
    assert predict(interp, x[:0]).shape == (0, 5)


def test_int8_io_file_quantizes_inputs_like_the_float_io_file(conv_files):
    _, paths = conv_files
    x = np.random.default_rng(3).random((20, 8, 8, 1), dtype=np.float32)
    float_io = predict(load_interpreter(paths["int8"]), x, batch_size=8)
    int8_io = predict(load_interpreter(paths["int8_io"]), x, batch_size=8)
    # Same quantized graph; only where quantize/dequantize happen differs (here vs in the file).
    np.testing.assert_allclose(int8_io, float_io, atol=1e-6)
    assert np.all(int8_io >= 0) and np.allclose(int8_io.sum(1), 1.0, atol=0.05)  # dequantized softmax


# --- weight figures ---------------------------------------------------------------------------------

def test_dense_parameters_and_macs():
    model = dense_model(20, 10)
    stats = weight_stats(convert(model, "float32"))
    assert stats == {"parameters": 210, "nonzero": 210, "kernel_parameters": 200, "kernel_nonzero": 200,
                     "sparsity": 0.0, "macs": 200}
    model.layers[0].bias.assign(np.zeros(10, np.float32))
    assert weight_stats(convert(model, "float32"))["parameters"] == 200  # all-zero bias: not stored


def test_conv_parameters_and_macs():
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3, padding="same")])
    model.set_weights([clearly_nonzero(np.random.default_rng(6), w.shape) for w in model.get_weights()])
    stats = weight_stats(convert(model, "float32"))
    assert stats == {"parameters": 40, "nonzero": 40, "kernel_parameters": 36, "kernel_nonzero": 36,
                     "sparsity": 0.0, "macs": 8 * 8 * 4 * 9}


@pytest.mark.parametrize("mode", MODES)
def test_half_zero_kernel_reads_back_as_half_sparse(mode):
    # 2048 kernel weights: big enough for dynamic-range quantization to store them as int8
    model = dense_model(32, 64, zero_share=0.5)
    stats = weight_stats(convert(model, mode, representative=calibration((32,))))
    assert stats == {"parameters": 2048 + 64, "nonzero": 1024 + 64, "kernel_parameters": 2048,
                     "kernel_nonzero": 1024, "sparsity": 0.5, "macs": 2048}


def test_sparse_encoded_weights_count_as_stored():
    model = dense_model(32, 64, zero_share=0.5)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]  # stores kept values only
    data = converter.convert()
    assert len(data) < len(convert(model, "float32")) * 0.75
    assert weight_stats(data)["sparsity"] == 0.5 and weight_stats(data)["kernel_parameters"] == 2048


def test_every_weighted_layer_kind_is_counted():
    inp = keras.Input((8, 8, 2))
    branches = [
        L.Conv2D(3, 3, padding="same")(inp),                          # 8*8*3 outputs x 3*3*2
        L.DepthwiseConv2D(3, depth_multiplier=2)(inp),                # 6*6*4 outputs x 3*3
        L.SeparableConv2D(3, 3, padding="same")(inp),                 # 8*8*2 x 9 + 8*8*3 x 2
        L.Conv2DTranspose(3, 3, strides=2, padding="same")(inp),      # 8*8*2 inputs x 3*3*3
        L.Conv1D(3, 3)(L.Reshape((64, 2))(inp)),                      # 62*3 outputs x 3*2
        L.Conv3D(2, (3, 3, 1))(L.Reshape((8, 8, 2, 1))(inp)),         # 6*6*2*2 outputs x 3*3*1*1
        L.Conv3DTranspose(2, (2, 2, 1), strides=(2, 2, 1))(L.Reshape((8, 8, 2, 1))(inp)),  # 128 x 2*2*2
    ]
    flat = L.Concatenate()([L.Flatten()(branch) for branch in branches])  # 2650 features
    model = keras.Model(inp, L.Dense(5)(flat))
    model.set_weights([clearly_nonzero(np.random.default_rng(4), w.shape) for w in model.get_weights()])
    stats = weight_stats(convert(model, "float32"))
    assert stats["macs"] == 3456 + 1296 + (1152 + 384) + 3456 + 1116 + 1296 + 1024 + 5 * 2650
    # As stored: the converter adds Conv3D biases with separate ADD ops (-2 -2) and gives the depthwise
    # half of the separable conv an all-zero bias of its own (+2, the only zeros).
    assert stats["parameters"] == model.count_params() - 4 + 2
    assert stats["parameters"] - stats["nonzero"] == 2
    assert stats["kernel_parameters"] == stats["kernel_nonzero"] == 13462


# --- gzip ---------------------------------------------------------------------------------------------

def test_gzip_size_of_bytes_and_files(tmp_path, conv_files):
    zeros, noise = bytes(4096), np.random.default_rng(5).bytes(4096)
    path = tmp_path / "noise.bin"
    path.write_bytes(noise)
    assert gzip_size(path) == gzip_size(noise) > 4096  # incompressible: gzip adds its header
    assert gzip_size(zeros) < 100
    assert gzip_size(zeros, level=0) > 4096  # level 0 stores without compressing
    model_file = conv_files[1]["float32"]
    assert gzip_size(model_file) < model_file.stat().st_size


def test_delegation_names_the_operators_xnnpack_leaves_out():
    """FireNet's int8 file: LiteRT 2.3.0's XNNPACK takes no int8 AVERAGE_POOL_2D or SOFTMAX, so they split the
    model into partitions; the float32 file runs as one."""
    model = keras.Sequential([L.Input((16, 16, 3)), L.Conv2D(4, 3, activation="relu"), L.AveragePooling2D(2),
                              L.Flatten(), L.Dense(3, activation="softmax")])
    found = {}
    for mode in ("float32", "int8"):
        flatbuffer = convert(model, mode, representative=calibration((16, 16, 3)))
        interpreter = Interpreter(model_content=flatbuffer)
        interpreter.allocate_tensors()
        found[mode] = delegation(interpreter)
    assert found["float32"] == {"operators": 5, "partitions": 1, "delegated": 5, "delegated_indices": [0, 1, 2, 3, 4],
                                "outside": []}
    assert found["int8"]["outside"] == ["AVERAGE_POOL_2D", "SOFTMAX"]
    assert found["int8"]["partitions"] == 3  # input and conv; reshape and dense; the output's dequantize
    assert found["int8"]["delegated"] == found["int8"]["operators"] - 2 == len(found["int8"]["delegated_indices"])
