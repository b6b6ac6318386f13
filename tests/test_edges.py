"""Every technique at the edges of its valid range, on the smallest real models of the zoo (issue 24).

Each case either completes with sane figures (sparsity read back from the converted file equal to the Keras
model's, every pruned zero kept, distinct values within the cluster count, a float32 file that predicts what
its model predicts) or stops before training with one UserError line naming the key and the fix. The crashes
this sweep found first (TFMOT's sparsity-preserving kmeans++ with fewer non-zero weights than centroids on a
side of zero, ragged per-channel centroids for an all-zero channel, scikit-learn's stratified split of a
3-image class) are cases here.

The models are trained for a few epochs on synthetic images: the cases test what the techniques do with the
weights, not how well the models learn.
"""

import compresslab  # noqa: F401  (sets the Keras flavour before TensorFlow loads)

import functools
import os

import numpy as np
import pytest
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter
from omegaconf import OmegaConf
from PIL import Image

from compresslab.data import prepare as prepare_data
from compresslab import settings
from compresslab.models import zoo
from compresslab.models import training
from compresslab.errors import UserError
from compresslab.models.seeding import seed_everything
from compresslab.techniques import clustering, pruning, quantization, sensitivity, weights
from compresslab.tflite import converter, flatbuffer, measure, runtime

BATCH = 8
# name: (zoo model, input shape, classes, model config, baseline epochs). The MLPs train long enough for a
# pruned layer to cost accuracy (`prune.layers: auto` needs that); an epoch of them takes milliseconds.
SPECS = {
    "firenet2": ("firenet", (24, 24, 3), 2, {}, 3),
    "mlp2": ("mlp", (8, 8, 3), 2, {"hidden_units": [80, 60], "dropout": 0.2}, 25),
    "mlp10": ("mlp", (8, 8, 3), 10, {"hidden_units": [80, 60], "dropout": 0.2}, 25),
    "resnet8": ("resnet8", (16, 16, 3), 10, {}, 2),
    "mobilenetv2": ("mobilenetv2", (32, 32, 3), 2, {"alpha": 0.35}, 1),
}


def prune_cfg(**overrides) -> settings.PruneConfig:
    cfg = {"name": "edge", "schedule": "polynomial", "initial_sparsity": 0.0, "final_sparsity": 0.5,
           "target_sparsity": None, "begin_step": None, "end_step": None, "frequency": 1, "layers": "all",
           "auto_max_drop": 1.0, "m_by_n": None, "epochs": 1, "learning_rate": 1e-3}
    return settings.parse("prune", {**cfg, **overrides})


CLUSTER_VALUES = {"name": "edge", "number_of_clusters": 16, "centroid_init": "kmeans++", "layers": "all",
                  "per_channel": False, "epochs": 1, "learning_rate": 1e-4}


def cluster_cfg(**overrides) -> settings.ClusterConfig:
    return settings.parse("cluster", {**CLUSTER_VALUES, **overrides})


def qat_cfg(**overrides) -> settings.QuantizeConfig:
    return settings.parse("quantize", {"name": "edge", "layers": "all", "epochs": 1, "learning_rate": 1e-4,
                                       **overrides})


BUDGET = settings.parse("cqat", {"name": "edge", "epochs": 1, "learning_rate": 1e-4})
PCQAT_CFG = settings.parse("pcqat", {"name": "edge", "cluster_epochs": 1, "epochs": 1, "learning_rate": 1e-4})


def synthetic(n: int, shape, classes: int, seed: int):
    """n images in [0, 1] with a per-class brightness and stripe pattern, and their labels."""
    rng = np.random.default_rng(seed)
    size, channels = shape[0], shape[2]
    yy, xx = np.mgrid[0:size, 0:size]
    labels = rng.permutation(np.arange(n) % classes)
    images = np.empty((n, size, size, channels), np.float32)
    for i, k in enumerate(labels):
        base = 0.2 + 0.6 * k / max(classes - 1, 1) + 0.12 * np.sin(xx / 2.0 * (k + 1)) * np.cos(yy / 3.0)
        images[i] = np.clip(base[..., None] + rng.normal(0, 0.06, (size, size, channels)), 0, 1)
    return images, labels.astype(np.int64)


@functools.cache
def splits(spec: str):
    _, shape, classes, _, _ = SPECS[spec]
    return synthetic(4 * classes + 16, shape, classes, 1), synthetic(2 * classes + 8, shape, classes, 2)


@functools.cache
def baseline(spec: str) -> keras.Model:
    """A briefly trained model of the spec; the techniques copy it, never change it."""
    name, shape, classes, cfg, epochs = SPECS[spec]
    seed_everything(0)
    model = zoo.build_model({"name": name, **cfg}, shape, classes)
    training.fit(model, *splits(spec), epochs=epochs, batch_size=BATCH, learning_rate=3e-3)
    return model


@functools.cache
def pruning_result(spec: str, sparsity: float, schedule: str = "polynomial") -> pruning.PruneResult:
    key = "final_sparsity" if schedule == "polynomial" else "target_sparsity"
    return pruning.prune(baseline(spec), prune_cfg(schedule=schedule, **{key: sparsity}), *splits(spec),
                         batch_size=BATCH)


def pruned(spec: str, sparsity: float, schedule: str = "polynomial") -> keras.Model:
    return pruning_result(spec, sparsity, schedule).model


def interpreter_of(flatbuffer_bytes: bytes) -> Interpreter:
    interpreter = Interpreter(model_content=flatbuffer_bytes)
    interpreter.allocate_tensors()
    return interpreter


def float32_file_agrees(model: keras.Model, spec: str) -> tuple[float, dict]:
    """Convert to float32; (share of validation images where the file predicts what the model does, stats)."""
    flatbuffer_bytes = converter.convert(model, "float32")
    images = splits(spec)[1][0]
    interpreter = interpreter_of(flatbuffer_bytes)
    file_classes = np.argmax(runtime.predict(interpreter, images), axis=1)
    keras_classes = np.argmax(model.predict(images, verbose=0), axis=1)
    return float(np.mean(file_classes == keras_classes)), flatbuffer.weight_stats(flatbuffer_bytes)


def assert_file_reads_back(model: keras.Model, spec: str) -> None:
    agreement, stats = float32_file_agrees(model, spec)
    assert agreement >= 0.9
    assert stats["sparsity"] == pytest.approx(weights.sparsity_report(model)["overall"], abs=1e-3)


@pytest.mark.parametrize("spec, sparsity", [("firenet2", 0.0), ("firenet2", 0.95), ("firenet2", 0.99),
                                            ("mlp2", 0.99), ("mlp10", 0.95), ("resnet8", 0.95),
                                            ("mobilenetv2", 0.95)])
def test_pruning_at_the_ends_of_its_range_reaches_its_sparsity_and_the_file_holds_it(spec, sparsity):
    result = pruning_result(spec, sparsity)
    # Over the layers it pruned: MobileNetV2's depthwise kernels are not prunable in TFMOT.
    assert result.sparsity["overall"] == pytest.approx(sparsity, abs=0.01)
    assert_file_reads_back(result.model, spec)


def test_a_constant_schedule_near_one_leaves_a_handful_of_weights():
    model = pruned("mlp2", 0.999, "constant")
    assert weights.sparsity_report(model)["overall"] == pytest.approx(0.999, abs=1e-3)
    assert_file_reads_back(model, "mlp2")


@pytest.mark.parametrize("spec, sparsity, schedule", [("firenet2", 0.95, "polynomial"), ("mlp2", 0.999, "constant")])
def test_pqat_at_high_sparsity_keeps_every_zero(spec, sparsity, schedule):
    parent = pruned(spec, sparsity, schedule)
    result = quantization.pqat(parent, BUDGET, *splits(spec), batch_size=BATCH)
    assert result.sparsity_after["overall"] == pytest.approx(result.sparsity_before["overall"])


def test_pqat_of_an_unpruned_model_stops_before_training():
    with pytest.raises(UserError, match=r"pqat: no kernel of model .* holds a zero.*give pqat the output of the "
                                        r"prune stage"):
        quantization.pqat(pruned("firenet2", 0.0), settings.parse("pqat", {"name": "edge", "epochs": 1000,
                                                                           "learning_rate": 1e-4}),
                          *splits("firenet2"), batch_size=BATCH)


@pytest.mark.parametrize("spec, sparsity, schedule, per_channel, clusters", [
    ("firenet2", 0.95, "polynomial", False, 16),   # the crash of issue 24: 13 non-zero head weights
    ("firenet2", 0.95, "polynomial", True, 16),    # whole output channels pruned away
    ("firenet2", 0.99, "polynomial", True, 8),
    ("firenet2", 0.0, "polynomial", False, 16),
    ("mlp2", 0.999, "constant", False, 16),        # one or two non-zero weights in some layers
    ("mlp10", 0.99, "polynomial", False, 16),
])
def test_pcqat_at_the_ends_of_the_pruning_range_keeps_every_zero_and_bounds_each_layer(spec, sparsity, schedule,
                                                                                     per_channel, clusters):
    parent = pruned(spec, sparsity, schedule)
    parent_zeros = {name: kernel == 0 for name, kernel in weights.kernels(parent).items()}
    result = clustering.pcqat(parent, cluster_cfg(number_of_clusters=clusters, per_channel=per_channel),
                              PCQAT_CFG, *splits(spec), batch_size=BATCH)
    after = weights.kernels(result.model)
    for name, zeros in parent_zeros.items():
        assert np.all(after[name][zeros] == 0), name
    plan = result.cluster
    for name, count in plan.layer_clusters.items():
        assert 3 <= count <= clusters
        assert plan.unique_values[name] <= count or name in plan.whole_kernel_layers or per_channel, name
        assert plan.channel_unique_values[name] <= count, name
    assert set(plan.capped_layers) <= set(plan.layer_clusters)
    assert plan.plan_measurements()["capped_layers"] == len(plan.capped_layers)
    if sparsity >= 0.95:
        assert plan.capped_layers or plan.skipped_layers or plan.whole_kernel_layers, \
            "at this sparsity some layer holds fewer non-zero weights than the clusters asked"


def test_two_clusters_cluster_and_cqat_but_pcqat_asks_for_three():
    clustered = clustering.cluster(baseline("mlp2"), cluster_cfg(number_of_clusters=2), *splits("mlp2"),
                                   batch_size=BATCH)
    assert max(clustered.unique_values.values()) <= 2
    cqat = clustering.cqat(clustered.model, BUDGET, *splits("mlp2"), batch_size=BATCH)
    assert max(cqat.unique_values_after.values()) <= 2
    with pytest.raises(UserError, match=r"cluster.number_of_clusters=2 is too few for pcqat.*set it to 3 or more"):
        settings.read(OmegaConf.create({"cluster": {**CLUSTER_VALUES, "number_of_clusters": 2},
                                        "pcqat": PCQAT_CFG.model_dump()}), "cluster", "pcqat")


def test_more_clusters_than_a_layer_holds_stops_before_training():
    model = baseline("mlp2")
    head = model.layers[-1].name   # 60 x 2 weights
    with pytest.raises(UserError, match=rf"layer '{head}' has 120 kernel weights, not more than "
                                        r"cluster.number_of_clusters=200: lower number_of_clusters"):
        clustering.cluster(model, cluster_cfg(number_of_clusters=200, epochs=1000), *splits("mlp2"), batch_size=BATCH)
    with pytest.raises(UserError, match=r"cluster.number_of_clusters=1100 is more than the 1024 centroids"):
        cluster_cfg(number_of_clusters=1100)


def test_m_by_n_prunes_only_the_layers_whose_inputs_fill_its_blocks():
    # FireNet's first convolution reads 3 channels: 2:4 would leave it a third sparse while reporting 50 %.
    model = baseline("firenet2")
    first = model.layers[0].name
    result = pruning.prune(model, prune_cfg(m_by_n="2:4"), *splits("firenet2"), batch_size=BATCH)
    assert first not in result.pruned_layers and "Conv2D has 3" in result.skipped_layers[first]
    assert result.sparsity["overall"] == pytest.approx(0.5, abs=0.01)
    assert weights.sparsity_report(result.model, [first])["overall"] == 0.0
    assert_file_reads_back(result.model, "firenet2")


def test_a_single_named_layer_is_the_only_one_each_technique_touches():
    model, split = baseline("mlp2"), splits("mlp2")
    first, middle, head = (layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense))
    pruned_one = pruning.prune(model, prune_cfg(layers=[middle], final_sparsity=0.8), *split, batch_size=BATCH)
    assert weights.sparsity_report(pruned_one.model)["layers"] == pytest.approx(
        {first: 0.0, middle: 0.8, head: 0.0}, abs=0.01)
    qat = quantization.quantize_aware(model, qat_cfg(layers=[middle]), *split, batch_size=BATCH)
    assert qat.quantized_layers == [middle]
    clustered = clustering.cluster(model, cluster_cfg(layers=[middle]), *split, batch_size=BATCH)
    assert clustered.clustered_layers == [middle] and clustered.unique_values[middle] <= 16


@pytest.mark.parametrize("technique", ["prune", "quantize", "cluster"])
def test_a_layer_word_that_matches_no_layer_stops_before_training(technique):
    model, split = baseline("mlp2"), splits("mlp2")
    with pytest.raises(UserError, match=rf"{technique}.layers='conv' matches no layer of model 'mlp'"):
        if technique == "prune":
            pruning.prune(model, prune_cfg(layers="conv", epochs=1000), *split, batch_size=BATCH)
        elif technique == "quantize":
            quantization.quantize_aware(model, qat_cfg(layers="conv", epochs=1000), *split, batch_size=BATCH)
        else:
            clustering.cluster(model, cluster_cfg(layers="conv", epochs=1000), *split, batch_size=BATCH)


def test_auto_layers_where_no_layer_passes_names_the_least_sensitive_and_the_fix():
    with pytest.raises(UserError, match=r"prune.layers=auto: no layer stays within prune.auto_max_drop=1e-06 pp "
                                        r"at 99% sparsity .*raise prune.auto_max_drop to at least"):
        sensitivity.choose_layers_to_prune(baseline("mlp10"), *splits("mlp10"),
                                           prune_cfg(layers="auto", final_sparsity=0.99, auto_max_drop=1e-6),
                                           batch_size=BATCH, seed=0)


def test_more_calibration_samples_than_the_train_split_calibrates_on_all_of_it():
    images = splits("firenet2")[0][0]
    chosen = converter.calibration_samples(images, 1000, seed=0)
    np.testing.assert_array_equal(chosen, images)
    file = converter.convert(baseline("firenet2"), "int8", representative=chosen)
    interpreter = interpreter_of(file)
    val_images, val_labels = splits("firenet2")[1]
    accuracy = float(np.mean(np.argmax(runtime.predict(interpreter, val_images), axis=1) == val_labels))
    assert 0.0 <= accuracy <= 1.0 and flatbuffer.weight_stats(file)["parameters"] > 0


def test_more_threads_than_cores_are_timed_like_any_other_count(tmp_path):
    path = tmp_path / "pruned-float32.tflite"
    path.write_bytes(converter.convert(pruned("mlp2", 0.99), "float32"))
    threads = 4 * len(os.sched_getaffinity(0))
    cfg = settings.parse("evaluate", {"name": "edge", "threads": [1, threads], "positive_class": None,
                                      "warmup_runs": 1, "min_runs": 3, "min_seconds": 0.0, "ratio_rounds": 2,
                                      "measure_memory": False, "profile_seconds": 0})
    assert cfg.threads == [1, threads]
    row = measure.measure_file(path, splits("mlp2")[1][0], cfg.model_dump())
    assert row[f"latency_median_ms_t{threads}"] > 0 and row["sparsity"] == pytest.approx(0.99, abs=0.01)


def write_folder(root, counts: dict[str, int]):
    for k, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (8, 8), color=30 * k + i).save(root / name / f"{i}.png")
    return root


def data_cfg(**overrides) -> settings.DataConfig:
    cfg = {"name": "edge", "image_size": 8, "channels": 1, "val_fraction": 0.25, "test_fraction": 0.25,
           "seed": 0, "max_bad_share": 0.0, "max_images_per_class": None, "images_per_shard": 64}
    return settings.parse("data", {**cfg, **overrides})


def test_a_class_with_one_image_in_each_split_is_prepared(tmp_path):
    raw = write_folder(tmp_path / "raw", {"fire": 4, "no_fire": 4})
    metrics = prepare_data.prepare(raw, tmp_path / "prepared", data_cfg())
    assert metrics["classes"]["val"] == {"fire": 1, "no_fire": 1} == metrics["classes"]["test"]
    assert metrics["classes"]["train"] == {"fire": 2, "no_fire": 2}


def test_a_class_too_small_to_split_is_one_line_before_any_image_is_decoded(tmp_path):
    raw = write_folder(tmp_path / "raw", {"a": 3, "b": 3, "c": 3})
    with pytest.raises(UserError, match=r"class '[abc]' has 3 images, too few to give each of train, val and test "
                                        r"one in a stratified split"):
        prepare_data.prepare(raw, tmp_path / "prepared", data_cfg(val_fraction=0.34, test_fraction=0.34))
    assert not (tmp_path / "prepared").exists()
