"""The detectors: outputs that line up with the anchors, plain Keras layers TFMOT wraps, files LiteRT runs.

    .venv/bin/python -m pytest tests/test_detectors.py -q -p no:cacheprovider
"""

from pathlib import Path

import numpy as np
import pytest
import yaml

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from compresslab.errors import UserError
from compresslab.models import detectors, zoo
from compresslab.tflite import converter

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
SIZE, CLASSES = 64, 3
# Tiny widths: the same layers as the defaults at a fraction of the compute.
SMALL = {"ssdlite_mobilenetv2": {"alpha": 0.35}, "yolo_grid": {"width": 8}}
LEVELS = {"ssdlite_mobilenetv2": ([8, 16], [16, 32, 64]), "yolo_grid": ([8, 16, 32], [16, 32])}


def build(name, size=SIZE, classes=CLASSES, **cfg):
    return detectors.DETECTORS[name]((size, size, 3), classes, {"name": name, **SMALL[name], **cfg})


def images(n, size=SIZE, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


@pytest.fixture(params=sorted(detectors.DETECTORS))
def detector(request):
    """(name, model) of each detector with its default anchors, built anew for every test: TFMOT's pruning and
    clustering wrap the model's own layer objects, and strip_clustering writes the clustered kernels back into
    them, so a model shared between tests would carry one test's wrapping into the next."""
    return request.param, build(request.param)


@pytest.mark.parametrize("name, strides", [(name, strides) for name in sorted(LEVELS) for strides in LEVELS[name]])
def test_outputs_are_boxes_then_scores_with_one_row_per_anchor(name, strides):
    model = build(name, anchors={"strides": strides, "sizes": [[0.2, 0.3]] * len(strides)})
    spec = detectors.anchors_for({"name": name, "anchors": {"strides": strides, "sizes": [[0.2, 0.3]] * len(strides)}},
                                 SIZE)
    boxes, scores = model.predict(images(2), verbose=0)
    assert model.output_names == ["boxes", "scores"]
    assert boxes.shape == (2, spec.count, 4) and scores.shape == (2, spec.count, CLASSES)
    assert len(spec.boxes()) == spec.count


@pytest.mark.parametrize("name, size", [("ssdlite_mobilenetv2", 40), ("yolo_grid", 40), ("yolo_grid", 72)])
def test_sizes_that_strides_do_not_divide_still_give_ceil_cells_per_level(name, size):
    # 40 px: 5, 3 and 2 cells at strides 8, 16, 32; the neck's upsampled 2x2 and 3x3 grids are cropped to fit.
    model = build(name, size=size)
    spec = detectors.anchors_for({"name": name}, size)
    assert model.output_shape == [(None, spec.count, 4), (None, spec.count, CLASSES)]


def test_default_anchors_count_1080_and_567_at_96_pixels():
    assert detectors.anchors_for({"name": "ssdlite_mobilenetv2"}, 96).count == (12 * 12 + 6 * 6) * 2 * 3
    assert detectors.anchors_for({"name": "yolo_grid"}, 96).count == (12 * 12 + 6 * 6 + 3 * 3) * 1 * 3


def test_scores_are_probabilities_that_start_at_the_retinanet_prior(detector):
    _, model = detector
    boxes, scores = model.predict(images(2), verbose=0)
    assert np.all((scores > 0) & (scores < 1))
    assert abs(float(scores.mean()) - 0.01) < 0.002 and float(scores.max()) < 0.05
    assert float(np.abs(boxes).max()) < 0.5  # boxes start at their anchors


def test_every_layer_is_a_standard_keras_layer_in_a_flat_graph(detector):
    _, model = detector
    kinds = {type(layer) for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)}
    assert all(kind.__module__.startswith("tf_keras.src.layers.") for kind in kinds), kinds
    assert not {kind.__name__ for kind in kinds} & {"TFOpLambda", "SlicingOpLambda", "Lambda", "Rescaling",
                                                    "Functional", "Sequential"}
    assert model.get_layer("scores").get_config()["activation"] == "sigmoid"


@pytest.mark.parametrize("name, strides", [("ssdlite_mobilenetv2", [16, 24]), ("ssdlite_mobilenetv2", [4, 16]),
                                           ("yolo_grid", [32, 16]), ("yolo_grid", [8, 8])])
def test_strides_the_backbone_cannot_give_are_one_line_errors(name, strides):
    with pytest.raises(UserError, match=r"model\.anchors\.strides=.*data\.image_size=64") as err:
        build(name, anchors={"strides": strides, "sizes": [[0.2]] * len(strides)})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("cfg, message", [
    ({"name": "mobilenetv2"}, "model 'mobilenetv2' is not a detector"),
    ({"name": "yolo_grid", "anchors": {"strides": [8, 16]}}, "model.anchors.sizes has 3 levels"),
])
def test_anchors_of_a_classifier_or_mismatched_levels_are_one_line_errors(cfg, message):
    with pytest.raises(UserError, match=message) as err:
        detectors.anchors_for(cfg, 96)
    assert "\n" not in str(err.value)


def test_a_non_square_input_and_a_zero_width_are_one_line_errors():
    with pytest.raises(UserError, match="set data.image_size to one number"):
        detectors.yolo_grid((64, 48, 3), 2, {"name": "yolo_grid", "width": 8})
    with pytest.raises(UserError, match=r"model\.width=0 must be a positive integer"):
        build("yolo_grid", width=0)


def test_config_files_hold_the_builders_default_anchors():
    for name, default in detectors.DEFAULTS.items():
        cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        assert cfg["name"] == name and cfg["anchors"] == default
        assert detectors.is_detector(name)
    assert not detectors.is_detector("mobilenetv2")


def test_the_defaults_have_the_reported_parameter_counts():
    ssd = detectors.ssdlite_mobilenetv2((96, 96, 3), 10, {"name": "ssdlite_mobilenetv2", "alpha": 0.35})
    yolo = detectors.yolo_grid((96, 96, 3), 10, {"name": "yolo_grid"})
    print(f"ssdlite_mobilenetv2 0.35: {zoo.count_parameters(ssd):,}; yolo_grid 16: {zoo.count_parameters(yolo):,}")
    assert (zoo.count_parameters(ssd), zoo.count_parameters(yolo)) == (130_360, 967_150)


def test_pruning_wraps_the_detector_and_strip_pruning_gives_back_its_outputs(detector):
    _, model = detector
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        model, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
    x = images(2)
    pruned.predict(x, verbose=0)
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    assert stripped.output_names == ["boxes", "scores"]
    for got, want in zip(stripped.predict(x, verbose=0), model.predict(x, verbose=0)):
        np.testing.assert_allclose(got, want, atol=1e-6)  # no pruning step ran: the same weights


def test_clustering_wraps_the_detector_and_strip_clustering_gives_back_its_outputs(detector):
    name, model = detector
    clustered = tfmot.clustering.keras.cluster_weights(
        model, number_of_clusters=8,
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS)
    stripped = tfmot.clustering.keras.strip_clustering(clustered)
    assert stripped.output_names == ["boxes", "scores"]
    coarsest = max(detectors.anchors_for({"name": name}, SIZE).strides)   # every detector predicts there
    assert len(np.unique(stripped.get_layer(f"scores_{coarsest}").kernel.numpy())) <= 8


def outputs_of(data: bytes, x: np.ndarray) -> tuple[list[str], dict]:
    """The file's output signature keys in output-tensor order, and its outputs by key for one image."""
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    by_index = interpreter._get_full_signature_list()["serving_default"]["outputs"]  # noqa: SLF001
    order = [next(key for key, index in by_index.items() if index == d["index"])
             for d in interpreter.get_output_details()]
    return order, interpreter.get_signature_runner()(images=x)


def test_float32_and_int8_files_keep_both_outputs_named_and_in_order(detector):
    name, model = detector
    x = images(4)
    want_boxes, want_scores = model.predict(x[:1], verbose=0)
    files = {}
    for mode in ("float32", "int8"):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if mode == "int8":
            converter.configure_mode(conv, "int8", x, int8_io=False)
        files[mode] = conv.convert()
    order, out = outputs_of(files["float32"], x[:1])
    print(name, "float32 output order:", order)
    assert order == ["boxes", "scores"]
    np.testing.assert_allclose(out["boxes"], want_boxes, atol=1e-5)
    np.testing.assert_allclose(out["scores"], want_scores, atol=1e-5)
    order, out = outputs_of(files["int8"], x[:1])
    assert order == ["boxes", "scores"] and out["scores"].shape == want_scores.shape
    assert np.abs(out["scores"] - want_scores).max() < 0.01


def test_the_projects_converter_gives_dynamic_and_float16_files():
    model, x = build("yolo_grid"), images(1)
    want = model.predict(x, verbose=0)
    with converter.exported_model(model) as exported:
        for mode in ("dynamic", "float16"):
            order, out = outputs_of(converter.convert(model, mode, exported=exported), x)
            assert order == ["boxes", "scores"]
            np.testing.assert_allclose(out["scores"], want[1], atol=1e-3)


def test_quantization_aware_training_wraps_the_detector_and_converts_to_int8():
    # One detector (about 45 s each on 2 cores); SSDLite's QAT files are made in test_detection_pipeline.py.
    name, model = "yolo_grid", build("yolo_grid")
    qat = tfmot.quantization.keras.quantize_model(model)
    x = images(2)
    boxes, scores = qat.predict(x, verbose=0)
    assert boxes.shape == (2, model.output_shape[0][1], 4) and np.all((scores > 0) & (scores < 1))
    # TFMOT renames every wrapped layer quant_<name>, the outputs (and the converted file's signature keys) too.
    assert qat.output_names == ["quant_boxes", "quant_scores"]
    with converter.exported_model(qat) as exported:
        data = converter.convert(qat, "int8", qat=True, exported=exported)
    order, out = outputs_of(data, x[:1])
    print(name, "QAT int8 output order:", order)
    assert order == ["quant_boxes", "quant_scores"]
    assert np.abs(out["quant_scores"] - scores[:1]).max() < 0.01
