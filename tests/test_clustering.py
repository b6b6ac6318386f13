"""Clustering, CQAT and PCQAT on tiny models with the real TFMOT, converter and LiteRT interpreter."""

import compresslab  # noqa: F401  (sets the Keras flavour before TensorFlow loads)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter
from omegaconf import OmegaConf

from compresslab import settings
from compresslab.models import saving
from compresslab.models import training
from compresslab.techniques import cluster_plan, clustering
from compresslab.techniques import weights
from compresslab.errors import UserError

CLUSTERS = 4
BATCH = 16


def cluster_values(**overrides):
    cfg = {"name": "test", "number_of_clusters": CLUSTERS, "centroid_init": "kmeans++", "layers": "all",
           "per_channel": False, "epochs": 1, "learning_rate": 1e-3}
    cfg.update(overrides)
    return cfg


def cluster_cfg(**overrides) -> settings.ClusterConfig:
    return settings.parse("cluster", cluster_values(**overrides))


def read_pcqat(cluster: dict, pcqat: dict):
    """The cluster and pcqat groups read together, as the pcqat stage reads them."""
    return settings.read(OmegaConf.create({"cluster": cluster, "pcqat": pcqat}), "cluster", "pcqat")


CQAT_CFG = settings.parse("cqat", {"name": "test", "epochs": 1, "learning_rate": 1e-3})
PCQAT_VALUES = {"name": "test", "cluster_epochs": 1, "epochs": 1, "learning_rate": 1e-3}
PCQAT_CFG = settings.parse("pcqat", PCQAT_VALUES)


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


def convert_and_run(model, path, quantized, shape=(1, 8, 8, 1)):
    """Save, reload, convert to TFLite (written beside `path` as .tflite) and run one input through LiteRT;
    returns the reloaded model and the output."""
    saving.save_model(model, path)
    loaded = saving.load_model(path)
    converter = tf.lite.TFLiteConverter.from_keras_model(loaded)
    if quantized:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    flatbuffer = converter.convert()
    path.with_suffix(".tflite").write_bytes(flatbuffer)
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.full(shape, 0.5, np.float32))
    interpreter.invoke()
    return loaded, interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("override, key", [
    ({"number_of_clusters": 1}, "cluster.number_of_clusters"),
    ({"number_of_clusters": "8"}, "cluster.number_of_clusters"),
    ({"number_of_clusters": 1100}, "cluster.number_of_clusters=1100 is more than the 1024 centroids"),
    ({"centroid_init": "kmeans"}, "cluster.centroid_init"),
    ({"per_channel": "yes"}, "cluster.per_channel"),
    ({"epochs": 0}, "cluster.epochs"),
    ({"epochs": 1.5}, "cluster.epochs"),
    ({"learning_rate": -1e-3}, "cluster.learning_rate"),
])
def test_cluster_config_errors_name_the_key(override, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        settings.parse("cluster", cluster_values(**override))


def test_valid_configs_pass_including_omegaconf():
    settings.read(OmegaConf.create({"cluster": cluster_values(layers=["fc"])}), "cluster")
    read_pcqat(cluster_values(), PCQAT_VALUES)


@pytest.mark.parametrize("cfg, key", [({"epochs": 0, "learning_rate": 1e-3}, "cqat.epochs"),
                                      ({"epochs": 1, "learning_rate": 0}, "cqat.learning_rate")])
def test_cqat_config_errors(cfg, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        settings.parse("cqat", cfg)


@pytest.mark.parametrize("cluster_over, pcqat_over, key", [
    ({"number_of_clusters": 2}, {}, "number_of_clusters"),
    ({}, {"cluster_epochs": 0}, "pcqat.cluster_epochs"),
    ({}, {"epochs": -1}, "pcqat.epochs"),
    ({}, {"learning_rate": None}, "pcqat.learning_rate"),
])
def test_pcqat_config_errors(cluster_over, pcqat_over, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        read_pcqat(cluster_values(**cluster_over), {**PCQAT_VALUES, **pcqat_over})


def test_too_many_clusters_names_layer_and_count(model):
    # head: 16 x 3 = 48 weights; conv per channel: 3 x 3 x 1 = 9 weights
    with pytest.raises(UserError, match=r"'head' has 48 kernel weights"):
        cluster_plan.check_cluster_counts(model, ["fc", "head"], 64)
    with pytest.raises(UserError, match=r"'conv' has 9 kernel weights per output channel"):
        cluster_plan.check_cluster_counts(model, ["conv"], 9, per_channel=True)
    cluster_plan.check_cluster_counts(model, ["conv"], 8, per_channel=True)


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


def prune_to(model, sparsity):
    """Zero the smallest-magnitude `sparsity` share of every kernel, as magnitude pruning leaves it."""
    for layer in model.layers:
        found = layer.get_weights()
        if found and found[0].ndim >= 2:
            kernel = found[0]
            kernel[np.abs(kernel) < np.quantile(np.abs(kernel), sparsity)] = 0
            layer.set_weights([kernel, *found[1:]])


def test_capacity_follows_tfmots_split_of_centroids_between_signs():
    # 8 clusters with sparsity kept: one zero centroid and 7 split by the count of each sign, rounded half to
    # even as tf.math.round does. 3 negative and 9 positive distinct weights: round(7 * 3 / 12) = 2 negative
    # and 5 positive centroids fit, so all 8 do.
    kernel = np.concatenate([-np.arange(1, 4), np.zeros(20), np.arange(1, 10)]).astype(np.float32)[:, None]
    assert cluster_plan.cluster_capacity(kernel, 8, preserve_sparsity=True, per_channel=False) == 8
    # 1 negative weight and 3 positive: 7 centroids cannot be placed; 5 clusters put 1 below zero and 3 above.
    kernel = np.array([[-1.0], [0.0], [0.0], [1.0], [2.0], [3.0]], np.float32)
    assert cluster_plan.cluster_capacity(kernel, 8, preserve_sparsity=True, per_channel=False) == 5
    assert cluster_plan.cluster_capacity(kernel, 8, preserve_sparsity=False, per_channel=False) == 5
    # One non-zero weight: nothing left to cluster once a centroid is pinned at zero; an all-zero channel
    # leaves per-channel clustering no capacity at all.
    assert cluster_plan.cluster_capacity(np.array([[0.0], [2.0]], np.float32), 8, preserve_sparsity=True,
                                       per_channel=False) == 0
    channels = np.stack([np.arange(-4, 5, dtype=np.float32), np.zeros(9, np.float32)], axis=-1)
    assert cluster_plan.cluster_capacity(channels, 4, preserve_sparsity=True, per_channel=True) == 0
    assert cluster_plan.cluster_capacity(channels, 4, preserve_sparsity=True, per_channel=False) == 4


def test_pcqat_of_a_two_class_firenet_pruned_to_95_percent_caps_the_head_instead_of_crashing(data, tmp_path):
    # The crash of issue 24: the 256-weight head keeps 13 non-zero weights at 95 %, fewer on one side of zero
    # than TFMOT's kmeans++ wants centroids ("Expected num_to_sample <= points.rows()").
    from compresslab.models import zoo  # noqa: PLC0415
    keras.utils.set_random_seed(3)
    pruned = zoo.firenet((32, 32, 3), 2, {})
    prune_to(pruned, 0.95)
    rng = np.random.default_rng(3)
    images, labels = rng.random((32, 32, 32, 3), dtype=np.float32), rng.integers(0, 2, 32)
    parent_zeros = {name: kernel == 0 for name, kernel in weights.kernels(pruned).items()}
    head = pruned.layers[-1].name
    result = clustering.pcqat(pruned, cluster_cfg(number_of_clusters=16), PCQAT_CFG, (images[:24], labels[:24]),
                              (images[24:], labels[24:]), batch_size=8)
    assert result.cluster.capped_layers.keys() == {head}
    assert 3 <= result.cluster.layer_clusters[head] < 16
    assert result.cluster.plan_measurements()["capped_layers"] == 1
    assert any(f"layer {head!r} holds too few distinct weights" in note for note in result.cluster.notes("pcqat"))
    assert result.cqat.unique_values_after[head] <= result.cluster.layer_clusters[head]
    for name, zeros in parent_zeros.items():  # every pruned zero is still zero
        assert np.all(weights.kernels(result.model)[name][zeros] == 0), name
    # The converted file holds the capped head: its stored kernel has no more values per output channel than
    # the head's cluster count (int8, per-channel scales).
    loaded, _ = convert_and_run(result.model, tmp_path / "pcqat.keras", quantized=True, shape=(1, 32, 32, 3))
    from compresslab.tflite import flatbuffer  # noqa: PLC0415
    stored = flatbuffer.kernel_channel_unique_values(tmp_path / "pcqat.tflite")
    assert len(stored) == len(parent_zeros)
    assert list(stored.values())[-1] <= result.cluster.layer_clusters[head]


def test_pcqat_freezes_a_layer_too_sparse_to_cluster_so_its_zeros_stay(data):
    keras.utils.set_random_seed(4)
    pruned = make_model()
    kernel, bias = pruned.get_layer("head").get_weights()
    kernel[:] = 0
    kernel[0, 0] = 0.5  # one non-zero weight: nothing to cluster once a centroid is pinned at zero
    pruned.get_layer("head").set_weights([kernel, bias])
    result = clustering.pcqat(pruned, cluster_cfg(), PCQAT_CFG, *data, batch_size=BATCH)
    assert "head" in result.cluster.skipped_layers and "head" not in result.cluster.layer_clusters
    assert any("WARNING layer 'head' left unclustered" in note for note in result.cluster.notes("pcqat"))
    np.testing.assert_array_equal(weights.kernels(result.cluster.model)["head"], kernel)
    assert result.cqat.sparsity_after["layers"]["head"] == pytest.approx(1 - 1 / kernel.size)


def test_per_channel_pcqat_clusters_a_conv_with_an_empty_channel_over_its_whole_kernel(data):
    keras.utils.set_random_seed(5)
    pruned = make_model()
    prune_half(pruned, "conv")
    kernel, bias = pruned.get_layer("conv").get_weights()
    kernel[..., 1] = 0  # a pruned-away output channel: per-channel centroids would be ragged in TFMOT
    pruned.get_layer("conv").set_weights([kernel, bias])
    result = clustering.pcqat(pruned, cluster_cfg(layers=["conv"], per_channel=True), PCQAT_CFG, *data,
                              batch_size=BATCH)
    assert result.cluster.whole_kernel_layers == ["conv"]
    assert result.cluster.unique_values["conv"] <= CLUSTERS
    assert np.all(weights.kernels(result.model)["conv"][kernel == 0] == 0)


def test_pcqat_of_some_layers_keeps_the_zeros_of_the_pruned_layers_it_does_not_cluster(data):
    keras.utils.set_random_seed(6)
    pruned = make_model()
    prune_half(pruned, "fc")
    prune_half(pruned, "head")
    fc_zeros = weights.kernels(pruned)["fc"] == 0
    result = clustering.pcqat(pruned, cluster_cfg(layers=["head"]), PCQAT_CFG, *data, batch_size=BATCH)
    assert result.cluster.clustered_layers == ["head"]
    assert np.all(weights.kernels(result.cluster.model)["fc"][fc_zeros] == 0)   # frozen while clustering
    assert np.all(weights.kernels(result.model)["fc"][fc_zeros] == 0)           # and masked by CQAT
    assert result.cluster.model.get_layer("fc").trainable   # trainable again for CQAT


def test_cqat_from_calibrated_ranges_keeps_its_clusters(clustered, data):
    """quantize.calibration_batches under CQAT: the ranges start where the images reach, and calibrating leaves
    the centroids alone (only min/max variables are set)."""
    from compresslab.techniques import quantization

    images = quantization.calibration_images(data[0], 2, BATCH, seed=0)
    result = clustering.cqat(clustered.model, CQAT_CFG, *data, batch_size=BATCH, calibration=images)
    assert result.unique_values_after["fc"] <= CLUSTERS and result.channel_unique_values_after["conv"] <= CLUSTERS
    seen = float(keras.Model(clustered.model.input, clustered.model.get_layer("conv").output)(images).numpy().max())
    assert seen < 3   # far below TFMOT's initial 6, so a calibrated start is told apart
    qat_model = clustering.quantize_preserving_clusters(clustered.model, False, None)
    quantization.start_ranges(qat_model, images, BATCH, "cqat")
    (conv_max,) = [found["max_var"] for q, found in quantization.range_quantizers(qat_model)
                   if "max_var" in found and found["max_var"].name == "quant_conv/post_activation_max:0"]
    assert float(conv_max.numpy()) == pytest.approx(seen, rel=1e-3)
