"""Tests for compresslab.quantization: QAT of selected layers, PQAT sparsity drift, save/load/int8 conversion."""

import compresslab  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from compresslab import settings
from compresslab.models import saving
from compresslab.tflite.flatbuffer import op_name, read_model
from compresslab.techniques import quantization
from compresslab.techniques import weights
from compresslab.errors import UserError
from conftest import firenet_like

L = keras.layers
qk = quantization.qk
BATCH = 16


def qat_values(**overrides):
    cfg = {"name": "test", "layers": "all", "epochs": 1, "learning_rate": 1e-3}
    cfg.update(overrides)
    return cfg


def qat_cfg(**overrides) -> settings.QuantizeConfig:
    return settings.parse("quantize", qat_values(**overrides))


def pqat_cfg(**overrides) -> settings.Budget:
    values = qat_values(**overrides)
    del values["layers"]
    return settings.parse("pqat", values)


def zero_smallest_half(model):
    """Stand-in for a pruned, stripped model: the smaller half of each kernel set to exactly 0."""
    for layer in model.layers:
        if layer.name in ("conv", "fc", "out"):
            kernel, bias = layer.get_weights()
            kernel[np.abs(kernel) < np.median(np.abs(kernel))] = 0.0
            layer.set_weights([kernel, bias])
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.random((64, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, 64)


@pytest.fixture(scope="module")
def qat_results(data):
    keras.utils.set_random_seed(0)
    model = firenet_like()
    original = [w.copy() for w in model.get_weights()]
    results = {selection: quantization.quantize_aware(model, qat_cfg(layers=selection), data, data,
                                                      batch_size=BATCH)
               for selection in ("dense", "conv", "all")}
    return model, original, results


@pytest.fixture(scope="module")
def pqat_result(data):
    keras.utils.set_random_seed(1)
    pruned = zero_smallest_half(firenet_like())
    original = [w.copy() for w in pruned.get_weights()]
    result = quantization.pqat(pruned, pqat_cfg(epochs=2), data, data, batch_size=BATCH)
    assert all(np.array_equal(a, b) for a, b in zip(original, pruned.get_weights())), "pqat changed its input"
    return pruned, result


def wrapped_names(model):
    return {layer.layer.name for layer in model.layers if isinstance(layer, qk.QuantizeWrapper)}


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": 0}, r"quantize.epochs must be a positive number"),
    ({"epochs": 1.5}, r"quantize.epochs must be a whole number"),
    ({"learning_rate": -1.0}, r"quantize.learning_rate must be a positive number"),
    ({"learning_rate": None}, r"quantize.learning_rate must be a positive number"),
    ({"layers": None}, r"quantize.layers is not set"),
])
def test_invalid_qat_config_is_a_user_error(overrides, message):
    with pytest.raises(UserError, match=message):
        settings.parse("quantize", qat_values(**overrides))


def test_pqat_config_errors_name_the_pqat_group():
    with pytest.raises(UserError, match=r"pqat.epochs must be a positive number"):
        settings.parse("pqat", {"name": "pqat", "epochs": -2, "learning_rate": 1e-4})


@pytest.mark.parametrize("selection, wanted, unwanted", [
    ("dense", {"fc", "out"}, {"conv"}),
    ("conv", {"conv"}, {"fc", "out"}),
    ("all", {"conv", "fc", "out"}, set()),
])
def test_qat_wraps_only_the_selected_layers(qat_results, data, selection, wanted, unwanted):
    _, _, results = qat_results
    result = results[selection]
    assert result.quantized_layers == sorted(wanted, key=["conv", "fc", "out"].index)
    names = wrapped_names(result.model)
    assert wanted <= names and not unwanted & names
    assert len(result.history["loss"]) == 1 and np.isfinite(result.history["loss"][0])
    assert result.model.predict(data[0][:2], verbose=0).shape == (2, 3)


def test_qat_leaves_the_input_model_alone(qat_results):
    model, original, _ = qat_results
    assert all(np.array_equal(a, b) for a, b in zip(original, model.get_weights()))
    assert not any(isinstance(layer, keras.layers.Wrapper) for layer in model.layers)


def test_layers_the_default_scheme_cannot_quantize_are_named(data):
    inputs = keras.Input((8, 3))
    x = L.Flatten()(L.Conv1D(2, 3, name="c1")(inputs))
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="out")(x))
    with pytest.raises(UserError, match=r"quantize.layers: layer 'c1' \(Conv1D\) is not supported by TFMOT's "
                                        r"Default8BitQuantizeScheme: leave it out of quantize.layers"):
        quantization.quantize_aware(model, qat_cfg(layers="conv", epochs=100), data, data, batch_size=BATCH)


def test_pqat_names_an_unsupported_weightless_layer(data):
    inputs = keras.Input((8, 8, 1))
    x = L.Rescaling(1 / 255.0, name="scale")(inputs)
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="out")(L.Flatten()(x)))
    zero_smallest_half(model)
    with pytest.raises(UserError, match=r"pqat: layer 'scale' \(Rescaling\) is not supported by TFMOT's "
                                        r"Default8BitPrunePreserveQuantizeScheme: PQAT quantizes every layer"):
        quantization.pqat(model, pqat_cfg(epochs=100), data, data, batch_size=BATCH)


def test_quantize_needs_a_layer_selection(data):
    cfg = qat_values()
    del cfg["layers"]
    with pytest.raises(UserError, match=r"quantize.layers is not set"):
        quantization.quantize_aware(firenet_like(), settings.parse("quantize", cfg), data, data, batch_size=BATCH)


def test_pqat_refuses_a_model_without_zeros(data):
    with pytest.raises(UserError, match=r"pqat: no kernel of model .* holds a zero"):
        quantization.pqat(firenet_like(), pqat_cfg(), data, data, batch_size=BATCH)


def test_pqat_reports_sparsity_before_after_and_drift(pqat_result):
    pruned, result = pqat_result
    assert result.pruned_layers == ["conv", "fc", "out"]
    assert result.sparsity_before == weights.sparsity_report(pruned, result.pruned_layers)
    assert result.sparsity_before["overall"] == pytest.approx(0.5, abs=0.02)
    for name in result.pruned_layers:
        change = result.sparsity_after["layers"][name] - result.sparsity_before["layers"][name]
        assert result.drift["layers"][name] == pytest.approx(change)
    assert result.drift["overall"] == pytest.approx(
        result.sparsity_after["overall"] - result.sparsity_before["overall"])
    # The prune-preserving quantizer masks the kernels, so pruned weights get no gradient and stay 0.
    assert result.drift["overall"] == pytest.approx(0.0, abs=1e-9)
    assert {"conv", "fc", "out"} <= wrapped_names(result.model)


def convert_int8(model):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def run_one(tflite: bytes, x: np.ndarray):
    interpreter = Interpreter(model_content=tflite)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[:1])
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return interpreter, output


def int8_weight(interpreter, shape):
    """The int8 tensor holding a kernel, by its TFLite shape (Dense: [out, in])."""
    found = [d for d in interpreter.get_tensor_details()
             if d["dtype"] == np.int8 and tuple(d["shape"]) == shape]
    assert found, f"no int8 tensor of shape {shape}"
    return interpreter.get_tensor(found[0]["index"])


@pytest.mark.parametrize("which", ["qat", "pqat"])
def test_trained_model_round_trips_and_converts_to_int8(qat_results, pqat_result, data, tmp_path, which):
    model = qat_results[2]["all"].model if which == "qat" else pqat_result[1].model
    saving.save_model(model, tmp_path / "model.keras")
    loaded = saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(data[0][:4], verbose=0), model.predict(data[0][:4], verbose=0),
                               atol=1e-6)
    interpreter, output = run_one(convert_int8(loaded), data[0])
    assert output.shape == (1, 3) and np.isclose(output.sum(), 1.0, atol=0.02)
    fc = int8_weight(interpreter, (16, 36))
    if which == "pqat":
        # The zeros PQAT kept in the float kernel are still zeros in the int8 file.
        float_zeros = int(np.count_nonzero(weights.kernels(loaded)["fc"] == 0))
        assert np.count_nonzero(fc == 0) >= float_zeros > 0


def test_calibrated_ranges_are_the_min_max_inference_sees_and_nothing_else_changes():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((6,))
    x = L.Dense(8, activation="relu", name="fc")(inputs)
    x = L.BatchNormalization(name="bn")(L.Dropout(0.5, name="drop")(x))
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="out")(x))
    model.get_layer("bn").set_weights([np.full(8, 1.5, np.float32), np.full(8, 0.2, np.float32),
                                       np.full(8, 0.1, np.float32), np.full(8, 2.0, np.float32)])
    images = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32) * 3
    qat = quantization.quantize_layers(model, ["fc"], "quantize.layers", "leave it out")
    variables = {v.name: v for _, found in quantization.range_quantizers(qat) for v in found.values()}
    others = {v.name: v.numpy() for v in qat.variables if v.name not in variables}
    quantization.calibrate_ranges(qat, images, batch_size=16)

    # The input range spans every value seen (and 0); the ReLU output's range its largest inference value,
    # over all batches, not a moving average still near TFMOT's initial [-6, 6].
    (input_range,) = [found for q, found in quantization.range_quantizers(qat)
                      if type(q) is qk.quantizers.AllValuesQuantizer]  # the QuantizeLayer before fc
    assert input_range["min_var"].numpy() == pytest.approx(images.min(), rel=1e-6)
    assert input_range["max_var"].numpy() == pytest.approx(images.max(), rel=1e-6)
    relu = keras.Model(model.input, model.get_layer("fc").output)(images).numpy()
    assert variables["quant_fc/post_activation_min:0"].numpy() == 0.0
    assert variables["quant_fc/post_activation_max:0"].numpy() == pytest.approx(relu.max(), rel=0.02)
    # Weights, BatchNorm statistics and TFMOT's step counters are as they were; dropout is back on.
    assert all(np.array_equal(v.numpy(), others[v.name]) for v in qat.variables if v.name in others)
    assert qat.get_layer("drop").rate == 0.5 and qat.get_layer("bn").trainable
    kinds = {v.name: type(q).__name__ for q, found in quantization.range_quantizers(qat) for v in found.values()}
    assert kinds["quant_fc/post_activation_max:0"] == "MovingAverageQuantizer"  # swapped back for QAT
    probabilities = qat.predict(images, verbose=0)
    assert np.argmax(probabilities, 1).tolist() == np.argmax(model.predict(images, verbose=0), 1).tolist()


def test_qat_of_weightless_layers_alone_is_refused_before_training(data):
    # TFMOT would wrap a neighbour and carry on: a "QAT" model none of whose weights trained for int8.
    with pytest.raises(UserError, match=r"quantize.layers=\['drop', 'flat'\] holds no layer with weights"):
        quantization.quantize_aware(firenet_like(), qat_cfg(layers=["flat", "drop"], epochs=100), data, data,
                                    batch_size=BATCH)


def conv_output_range(model) -> float:
    (found,) = [found for q, found in quantization.range_quantizers(model)
                if any(v.name == "quant_conv/post_activation_max:0" for v in found.values())]
    return float(found["max_var"].numpy())


@pytest.mark.parametrize("technique", ["qat", "pqat"])
def test_qat_starts_from_calibrated_ranges_when_asked_and_from_tfmots_otherwise(data, technique):
    """quantize.calibration_batches: the conv's output range starts at what the calibration images reach (then
    follows TFMOT's moving average), instead of TFMOT's 6 that a few steps barely move."""
    images = quantization.calibration_images(data, 2, BATCH, seed=0)
    assert images.shape == (2 * BATCH, 8, 8, 1)
    np.testing.assert_array_equal(images, quantization.calibration_images(data, 2, BATCH, seed=0))   # seeded
    assert quantization.calibration_of(qat_cfg(), data, BATCH, 0) is None   # 0 batches, the default: no images
    ranges = {}
    for calibrated in (False, True):
        keras.utils.set_random_seed(3)
        model = zero_smallest_half(firenet_like())
        calibration = images if calibrated else None
        if technique == "qat":
            result = quantization.quantize_aware(model, qat_cfg(learning_rate=1e-9), data, data, batch_size=BATCH,
                                                 calibration=calibration)
        else:
            result = quantization.pqat(model, pqat_cfg(learning_rate=1e-9), data, data, batch_size=BATCH,
                                       calibration=calibration)
        ranges[calibrated] = conv_output_range(result.model)
        seen = float(keras.Model(model.input, model.get_layer("conv").output)(images).numpy().max())
    assert ranges[False] > 5.9                                    # TFMOT's initial 6, 4 steps of decay 0.999
    assert ranges[True] == pytest.approx(seen, rel=0.05) and ranges[True] < 0.5 * ranges[False]


def test_whole_model_annotation_leaves_concatenate_to_the_converter():
    """PQAT/CQAT annotate every layer but Concatenate (TFMOT's ConcatTransform mis-quantizes one fed by
    Conv-BN-ReLU); a model without one is annotated by TFMOT's own call."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 1))
    branches = [L.ReLU(name=f"relu{i}")(L.BatchNormalization(name=f"bn{i}")(L.Conv2D(4, 3, padding="same",
                                                                                      name=f"conv{i}")(inputs)))
                for i in range(2)]
    x = L.Concatenate(name="cat")(branches)
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="out")(L.Flatten(name="flat")(x)))
    annotated = quantization.annotate_whole_model(model)
    kinds = {layer.name: type(layer).__name__ for layer in annotated.layers}
    assert kinds["cat"] == "Concatenate"
    assert all(kind == "QuantizeAnnotate" for name, kind in kinds.items() if kind not in ("Concatenate", "InputLayer"))
    plain = quantization.annotate_whole_model(firenet_like())
    assert [type(layer).__name__ for layer in plain.layers] == [
        type(layer).__name__ for layer in qk.quantize_annotate_model(firenet_like()).layers]
    # the prune-preserving scheme applies to it, and with calibrated ranges it predicts what the float model does
    images = np.random.default_rng(0).random((32, 8, 8, 1), dtype=np.float32)
    wrapped = qk.quantize_apply(annotated, qk.collab_opts.Default8BitPrunePreserveQuantizeScheme())
    quantization.calibrate_ranges(wrapped, images, 16)
    np.testing.assert_allclose(wrapped(images, training=False).numpy(), model(images, training=False).numpy(),
                               atol=0.05)


def test_qat_of_a_convolution_folds_the_batch_norm_and_activation_after_it_into_the_int8_file(data):
    """TFMOT folds a BatchNorm and activation into the convolution before them only when they are annotated
    too: a conv selected alone left its BatchNorm's MUL and ADD in the int8 file (MobileNetV2: 52 MULs)."""
    keras.utils.set_random_seed(6)
    inputs = keras.Input((8, 8, 1))
    x = L.ReLU(6.0, name="relu")(L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(inputs)))
    x = L.Activation("relu", name="act")(L.BatchNormalization(name="bn_dw")(L.DepthwiseConv2D(3, name="dw")(x)))
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="out")(L.Flatten(name="flat")(x)))
    assert quantization.with_folded_followers(model, ["conv", "dw"]) == ["conv", "bn", "relu", "dw", "bn_dw", "act"]
    assert quantization.with_folded_followers(model, ["dw", "out"]) == ["dw", "bn_dw", "act", "out"]
    result = quantization.quantize_aware(model, qat_cfg(layers="conv"), data, data, batch_size=BATCH)
    assert result.quantized_layers == ["conv", "dw"]   # what was asked; the followers ride along
    tflite, _ = read_model(convert_int8(result.model))
    ops = {op_name(tflite, op) for op in tflite.subgraphs[0].operators}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D"} <= ops and not ops & {"MUL", "ADD"}, ops
    sequential = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3, name="conv"),
                                   L.BatchNormalization(name="bn"), L.ReLU(name="relu"), L.Flatten(name="flat"),
                                   L.Dense(3, name="out")])
    assert quantization.with_folded_followers(sequential, ["conv"]) == ["conv", "bn", "relu"]
