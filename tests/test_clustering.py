"""Clustering, CQAT and PCQAT on tiny models with the real TFMOT, converter and LiteRT interpreter."""

import compresslab  # noqa: F401  (sets the Keras flavour before TensorFlow loads)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter
from omegaconf import OmegaConf

from compresslab import model_io, training
from compresslab.techniques import clustering
from compresslab.techniques import weights
from compresslab.errors import UserError

CLUSTERS = 4
BATCH = 16


def cluster_cfg(**overrides):
    cfg = {"name": "test", "number_of_clusters": CLUSTERS, "centroid_init": "kmeans++", "layers": "all",
           "per_channel": False, "epochs": 1, "learning_rate": 1e-3}
    cfg.update(overrides)
    return cfg


CQAT_CFG = {"name": "test", "epochs": 1, "learning_rate": 1e-3}
PCQAT_CFG = {"name": "test", "cluster_epochs": 1, "epochs": 1, "learning_rate": 1e-3}


def make_model(conv_bias=True):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", use_bias=conv_bias, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu", name="fc")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="tiny")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 3, 64)
    return (x[:48], y[:48]), (x[48:], y[48:])


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return make_model()


@pytest.fixture(scope="module")
def clustered(model, data):
    return clustering.cluster(model, cluster_cfg(), *data, batch_size=BATCH)


def prune_half(model, name):
    """Zero the smallest-magnitude half of a layer's kernel (a stand-in for a pruned model)."""
    layer = model.get_layer(name)
    kernel, bias = layer.get_weights()
    kernel[np.abs(kernel) <= np.median(np.abs(kernel))] = 0
    layer.set_weights([kernel, bias])


def convert_and_run(model, path, quantized):
    """Save, reload, convert to TFLite and run one input through LiteRT; returns the output."""
    model_io.save_model(model, path)
    loaded = model_io.load_model(path)
    converter = tf.lite.TFLiteConverter.from_keras_model(loaded)
    if quantized:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.full((1, 8, 8, 1), 0.5, np.float32))
    interpreter.invoke()
    return loaded, interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("override, key", [
    ({"number_of_clusters": 1}, "cluster.number_of_clusters"),
    ({"number_of_clusters": "8"}, "cluster.number_of_clusters"),
    ({"centroid_init": "kmeans"}, "cluster.centroid_init"),
    ({"per_channel": "yes"}, "cluster.per_channel"),
    ({"epochs": 0}, "cluster.epochs"),
    ({"epochs": 1.5}, "cluster.epochs"),
    ({"learning_rate": -1e-3}, "cluster.learning_rate"),
])
def test_cluster_config_errors_name_the_key(override, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        clustering.validate_cluster_config(cluster_cfg(**override))


def test_valid_configs_pass_including_omegaconf():
    clustering.validate_cluster_config(OmegaConf.create(cluster_cfg(layers=["fc"])))
    clustering.validate_pcqat_config(cluster_cfg(), PCQAT_CFG)


@pytest.mark.parametrize("cfg, key", [({"epochs": 0, "learning_rate": 1e-3}, "cqat.epochs"),
                                      ({"epochs": 1, "learning_rate": 0}, "cqat.learning_rate")])
def test_cqat_config_errors(cfg, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        clustering.validate_cqat_config(cfg)


@pytest.mark.parametrize("cluster_over, pcqat_over, key", [
    ({"number_of_clusters": 2}, {}, "number_of_clusters"),
    ({}, {"cluster_epochs": 0}, "pcqat.cluster_epochs"),
    ({}, {"epochs": -1}, "pcqat.epochs"),
    ({}, {"learning_rate": None}, "pcqat.learning_rate"),
])
def test_pcqat_config_errors(cluster_over, pcqat_over, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        clustering.validate_pcqat_config(cluster_cfg(**cluster_over), {**PCQAT_CFG, **pcqat_over})


def test_too_many_clusters_names_layer_and_count(model):
    # head: 16 x 3 = 48 weights; conv per channel: 3 x 3 x 1 = 9 weights
    with pytest.raises(UserError, match=r"'head' has 48 kernel weights"):
        clustering.check_cluster_counts(model, ["fc", "head"], 64)
    with pytest.raises(UserError, match=r"'conv' has 9 kernel weights per output channel"):
        clustering.check_cluster_counts(model, ["conv"], 9, per_channel=True)
    clustering.check_cluster_counts(model, ["conv"], 8, per_channel=True)


def test_selection_errors_come_before_training(data):
    dense_only = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                   keras.layers.Dense(3, activation="softmax", name="head")])
    with pytest.raises(UserError, match="cluster.layers='conv' matches no layer"):
        clustering.cluster(dense_only, cluster_cfg(layers="conv"), *data, batch_size=BATCH)
    with pytest.raises(UserError, match="'head' has 192 kernel weights"):  # 64 inputs x 3 units
        clustering.cluster(dense_only, cluster_cfg(number_of_clusters=200), *data, batch_size=BATCH)


def test_cluster_wrapped_model_is_measured_through_the_wrapper(model, data):
    # weights.kernels must read the clustered kernel, not the wrapper's original-weights variable, also
    # after training has left a traced tensor in the layer's kernel attribute
    wrapped = clustering.wrap_for_clustering(model, ["fc", "head"], cluster_cfg())
    training.fit(wrapped, *data, epochs=1, batch_size=BATCH, learning_rate=1e-3)
    assert weights.unique_values_report(model)["fc"] > CLUSTERS
    assert all(0 < count <= CLUSTERS for count in weights.unique_values_report(wrapped, ["fc", "head"]).values())
    assert model.get_layer("fc").trainable_weights, "wrapping must not alter the caller's model"


def test_cluster_all_layers_bounds_unique_values(model, clustered):
    assert clustered.clustered_layers == ["conv", "fc", "head"]
    assert clustered.requested_clusters == CLUSTERS
    assert all(0 < count <= CLUSTERS for count in clustered.unique_values.values())
    assert set(clustered.unique_values) == {"conv", "fc", "head"}
    assert not any(isinstance(layer, keras.layers.Wrapper) for layer in clustered.model.layers)
    assert weights.unique_values_report(model)["fc"] > CLUSTERS  # the parent is untouched
    assert len(clustered.history["loss"]) == 1


def test_dense_only_clustering_leaves_conv_untouched(model, data):
    result = clustering.cluster(model, cluster_cfg(layers="dense", centroid_init="linear"), *data, batch_size=BATCH)
    assert result.clustered_layers == ["fc", "head"]
    assert all(count <= CLUSTERS for count in result.unique_values.values())
    # The conv is not clustered: it keeps one distinct value per weight. Fine-tuning still trains it (as
    # in TFMOT's selective clustering), so it moves a little but is not snapped to centroids.
    conv, parent_conv = weights.kernels(result.model)["conv"], weights.kernels(model)["conv"]
    assert weights.unique_values_report(result.model)["conv"] == conv.size
    np.testing.assert_allclose(conv, parent_conv, atol=0.02)


def test_per_channel_clustering_of_biasless_conv(data):
    # TFMOT's own cluster_weights skips this layer silently (channels counted from the missing bias)
    keras.utils.set_random_seed(1)
    model = make_model(conv_bias=False)
    result = clustering.cluster(model, cluster_cfg(layers=["conv"], per_channel=True, centroid_init="density-based"),
                                *data, batch_size=BATCH)
    assert result.clustered_layers == ["conv"]
    assert result.channel_unique_values["conv"] <= CLUSTERS
    assert CLUSTERS < result.unique_values["conv"] <= CLUSTERS * 4  # one centroid set per output channel


def test_cqat_keeps_clusters_and_round_trips(clustered, data, tmp_path):
    parent_kernels = weights.kernels(clustered.model)
    result = clustering.cqat(clustered.model, CQAT_CFG, *data, batch_size=BATCH)
    assert result.unique_values_before == clustered.unique_values
    # Dense kernels share one centroid set; TFMOT's CQAT gives each Conv2D output channel its own, which
    # then train apart, so only the per-channel count of the conv stays bounded.
    assert result.unique_values_after["fc"] <= CLUSTERS
    assert result.unique_values_after["head"] <= CLUSTERS
    assert result.channel_unique_values_after["conv"] <= CLUSTERS
    assert result.drift["fc"]["max_abs"] > 0  # the centroids did train
    for name, kernel in weights.kernels(clustered.model).items():  # the parent is untouched
        np.testing.assert_array_equal(kernel, parent_kernels[name])

    loaded, output = convert_and_run(result.model, tmp_path / "cqat.keras", quantized=True)
    assert weights.unique_values_report(loaded) == result.unique_values_after
    assert output.shape == (1, 3) and np.isclose(output.sum(), 1, atol=0.05)


def test_clustered_model_round_trips(clustered, tmp_path):
    loaded, output = convert_and_run(clustered.model, tmp_path / "clustered.keras", quantized=False)
    assert weights.unique_values_report(loaded, clustered.clustered_layers) == clustered.unique_values
    expected = clustered.model.predict(np.full((1, 8, 8, 1), 0.5, np.float32), verbose=0)
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_pcqat_keeps_pruned_zeros(data):
    keras.utils.set_random_seed(2)
    pruned = make_model()
    prune_half(pruned, "head")
    parent_zeros = weights.kernels(pruned)["head"] == 0
    # Only the head is clustered, so the unpruned fc comes first with no zeros: stock TFMOT then turns
    # sparsity preservation off for every later Dense layer and the head loses its zeros.
    result = clustering.pcqat(pruned, cluster_cfg(layers=["head"]), PCQAT_CFG, *data, batch_size=BATCH)
    assert result.parent_sparsity["layers"]["head"] == pytest.approx(0.5)
    assert result.cluster.sparsity["layers"]["head"] >= 0.5 - 0.02
    assert result.cqat.sparsity_after["layers"]["head"] >= 0.5 - 0.02
    assert np.all(weights.kernels(result.model)["head"][parent_zeros] == 0)
    assert result.cluster.unique_values["head"] <= CLUSTERS
    assert result.cqat.unique_values_after["head"] <= CLUSTERS
