"""Pruning that can buy speed: the zoo's MobileNetV2 in the shape XNNPACK's sparse inference needs, the 1x1
convolutions TFMOT's PruneForLatencyOnXNNPack policy picks (prune.layers=xnnpack), the converter's sparse
weight format, and which .tflite files qualify for sparse inference (and why not), read from the file."""

import compresslab  # noqa: F401  (sets the Keras flavour before TensorFlow is imported)

import numpy as np
import pytest
import tf_keras as keras

from compresslab import settings
from compresslab.models import zoo
from compresslab.errors import UserError
from compresslab.techniques import pruning
from compresslab.tflite import converter, flatbuffer, sparse
from conftest import firenet_like


@pytest.fixture(scope="module")
def mobilenet():
    keras.utils.set_random_seed(0)
    return zoo.mobilenetv2((64, 64, 3), 4, {"alpha": 0.35})  # 2x2 before pooling: the converter keeps MEAN


def pointwise(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
            and not isinstance(layer, keras.layers.DepthwiseConv2D) and layer.kernel_size == (1, 1)]


def pruned_copy(model, sparsity):
    """A copy whose 1x1 convolutions have their smallest `sparsity` of weights set to zero (magnitude pruning's
    end state: latency and the file's form do not depend on what the rest learnt)."""
    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    for layer in pointwise(pruned):
        kernel = layer.get_weights()[0]
        kernel[np.abs(kernel) < np.quantile(np.abs(kernel), sparsity)] = 0.0
        layer.set_weights([kernel])
    return pruned


@pytest.mark.parametrize("shape, alpha, classes", [((64, 64, 3), 0.35, 10), ((32, 32, 3), 1.0, 2)])
def test_the_zoo_mobilenetv2_has_keras_applications_parameter_count(shape, alpha, classes):
    reference = keras.applications.MobileNetV2(input_shape=shape, alpha=alpha, weights=None, classes=classes)
    ours = zoo.mobilenetv2(shape, classes, {"alpha": alpha})
    assert zoo.count_parameters(ours) == zoo.count_parameters(reference)
    assert ours.output_shape == reference.output_shape


def test_prune_layers_xnnpack_picks_the_1x1_convolutions_of_a_model_the_policy_accepts(mobilenet):
    chosen = pruning.xnnpack_layers(mobilenet)
    assert chosen == [layer.name for layer in pointwise(mobilenet)] and len(chosen) == 34
    with pytest.raises(UserError, match="prune.layers=xnnpack: .*cannot use XNNPACK's sparse inference.*"
                                        "use model=mobilenetv2") as err:
        pruning.xnnpack_layers(firenet_like(3))
    assert "\n" not in str(err.value)
    cfg = {"schedule": "polynomial", "initial_sparsity": 0.0, "final_sparsity": 0.8, "frequency": 10,
           "layers": "xnnpack", "m_by_n": "2:4", "epochs": 1, "learning_rate": 1e-3}
    with pytest.raises(UserError, match="m_by_n"):
        settings.parse("prune", cfg)
    settings.parse("prune", {**cfg, "m_by_n": None})


@pytest.mark.slow(minutes=1.3)  # four MobileNetV2 conversions
def test_which_files_qualify_for_sparse_inference_and_why_not(mobilenet):
    dense = converter.convert(mobilenet, "float32")
    assert sparse.sparse_inference(dense).startswith("no: no 1x1 convolution is 67% zeros")
    pruned = pruned_copy(mobilenet, 0.8)  # its float32 files: the next test
    calibration = np.random.default_rng(0).random((4, 64, 64, 3), dtype=np.float32)
    with converter.exported_model(pruned) as exported:   # saved once for its three modes, as the stage does
        assert sparse.sparse_inference(converter.convert(pruned, "float16", exported=exported)) == sparse.ELIGIBLE
        assert "integer weights" in sparse.sparse_inference(converter.convert(pruned, "dynamic", exported=exported))
        assert "integer weights" in sparse.sparse_inference(
            converter.convert(pruned, "int8", representative=calibration, exported=exported))
    firenet = firenet_like(3)
    assert sparse.sparse_inference(converter.convert(firenet, "float32")) == \
        "no: it does not start with a 3x3 stride-2 convolution over 3 channels"
    tiny_calibration = np.random.default_rng(0).random((4, *firenet.input_shape[1:]), dtype=np.float32)
    assert "integer input" in sparse.sparse_inference(
        converter.convert(firenet, "int8", representative=tiny_calibration, int8_io=True))


@pytest.mark.slow(minutes=0.6)  # two MobileNetV2 conversions
def test_sparse_weights_store_only_the_kept_values_and_keep_the_predictions(mobilenet, tmp_path):
    pruned = pruned_copy(mobilenet, 0.8)
    with converter.exported_model(pruned) as exported:
        plain, packed = (converter.convert(pruned, "float32", sparse_weights=flag, exported=exported)
                         for flag in (False, True))
    assert sparse.sparse_inference(plain) == sparse.sparse_inference(packed) == sparse.ELIGIBLE
    assert len(packed) < 0.75 * len(plain)
    model, _ = flatbuffer.read_model(packed)
    assert "DENSIFY" in {flatbuffer.op_name(model, op) for op in model.subgraphs[0].operators}
    assert flatbuffer.weight_stats(packed)["sparsity"] == pytest.approx(flatbuffer.weight_stats(plain)["sparsity"])
    from compresslab.tflite import runtime

    images = np.random.default_rng(1).random((3, 64, 64, 3), dtype=np.float32)
    outputs = []
    for name, content in (("plain", plain), ("packed", packed)):
        (tmp_path / f"{name}.tflite").write_bytes(content)
        outputs.append(runtime.predict(runtime.load_interpreter(tmp_path / f"{name}.tflite"), images))
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
