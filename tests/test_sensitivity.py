"""Per-layer sensitivity (techniques/sensitivity.py, stages/sensitivity.py) and `prune.layers: auto`, on a tiny
trained model with a deliberately fragile layer, real TFMOT; one end-to-end run of the real `dvc` commands."""

import compresslab  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from omegaconf import OmegaConf

from compresslab import paths, settings
from compresslab.data import prepare
from compresslab.data import shards
from compresslab.models import seeding
from compresslab.models import training
from compresslab.errors import UserError
from compresslab.models.saving import load_model, save_model
from compresslab.techniques import sensitivity, weights
from conftest import REPO, mlflow_runs, read_json, restore_committed, run, stages_ran

L = keras.layers
SETTINGS = {"sparsity": 0.5, "quantize": False, "epochs": 0, "learning_rate": 0.001, "calibration_batches": 2}


def measured_with(**overrides) -> settings.SensitivityConfig:
    return settings.parse("sensitivity", {**SETTINGS, **overrides})


def load_stage(name):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def noisy_images(n, seed):
    """4x4 grey images of three classes whose signal is spread thinly over all 16 pixels under heavy noise: a
    classifier must average every pixel, so each weight of the layer that does it matters."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    patterns = np.stack([np.ones(16), np.tile([1.0, -1.0], 8)])
    centres = np.array([[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]])
    pixels = 128 + 25 * centres[labels] @ patterns + rng.normal(0, 40, (n, 16))
    return np.clip(pixels, 0, 255).astype(np.uint8).reshape(n, 4, 4, 1), labels


def as_input(split):
    return split[0].astype(np.float32) * np.float32(shards.PIXEL_SCALE), split[1]


def fragile_model():
    """`narrow` (16 -> 2, 32 weights) averages the noisy pixels: the fragile layer. `wide` (2 -> 64) and `out`
    (64 -> 3) are L1-regularised, so few of their weights carry the decision: redundant under pruning."""
    keras.utils.set_random_seed(0)
    sparse = keras.regularizers.l1(3e-3)
    return keras.Sequential([L.Input((4, 4, 1)), L.Flatten(name="flat"), L.Dense(2, name="narrow"),
                             L.Dense(64, activation="relu", kernel_regularizer=sparse, name="wide"),
                             L.Dense(3, activation="softmax", kernel_regularizer=sparse, name="out")])


@pytest.fixture(scope="module")
def splits():
    return {name: noisy_images(n, seed) for name, n, seed in (("train", 600, 0), ("val", 300, 1), ("test", 90, 2))}


@pytest.fixture(scope="module")
def trained(splits):
    model = fragile_model()
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(*as_input(splits["train"]), epochs=30, batch_size=32, verbose=0)
    return model


def val_accuracy(model, split):
    return sensitivity.correct_predictions(model, split) / len(split[1])


# --- the measurement ---------------------------------------------------------------------------------

def test_prune_by_magnitude_zeroes_what_tfmot_zeroes():
    kernel = np.random.default_rng(3).normal(size=(8, 5)).astype(np.float32)
    # TFMOT's own mask: one training step at constant sparsity with a zero learning rate.
    wrapped = keras.Sequential([L.Input((8,)), tfmot.sparsity.keras.prune_low_magnitude(
        L.Dense(5), pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.7, begin_step=0, frequency=1))])
    wrapped.set_weights([kernel, np.zeros(5, np.float32), *wrapped.get_weights()[2:]])
    wrapped.compile(keras.optimizers.SGD(0.0), "mse")
    wrapped.fit(np.ones((4, 8)), np.zeros((4, 5)), epochs=1, verbose=0,
                callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    tfmot_kernel = tfmot.sparsity.keras.strip_pruning(wrapped).layers[0].get_weights()[0]
    ours = sensitivity.prune_by_magnitude(kernel, 0.7)
    assert np.count_nonzero(ours) == 12  # round(40 * 0.3) largest magnitudes kept
    assert np.array_equal(ours, tfmot_kernel)
    assert np.count_nonzero(sensitivity.prune_by_magnitude(np.array([0.3, -0.1]), 0.9)) == 1  # one always kept


def test_one_row_per_prunable_layer_and_the_fragile_layer_ranks_first(trained, splits, capsys):
    val = as_input(splits["val"])
    before = [w.copy() for w in trained.get_weights()]
    result = sensitivity.measure(trained, as_input(splits["train"]), val, measured_with(), batch_size=32, seed=0)
    assert result.layers[0].layer == "narrow"
    assert sorted(row.layer for row in result.layers) == ["narrow", "out", "wide"]  # Flatten has no weights
    assert {row.layer: row.weights for row in result.layers} == {"narrow": 32, "wide": 128, "out": 192}
    drops = [row.pruned_drop_pp for row in result.layers]
    assert drops == sorted(drops, reverse=True)
    # Against the unmodified model's own validation accuracy, in percentage points.
    assert result.reference_accuracy == pytest.approx(val_accuracy(trained, val), abs=1e-6)
    assert result.reference_accuracy > 0.9 and result.images == 300
    for row in result.layers:
        assert row.pruned_drop_pp == pytest.approx(100 * (result.reference_accuracy - row.pruned_accuracy), abs=1e-3)
        assert row.int8_accuracy is None and "quantize is off" in row.int8_skipped
    assert drops[0] > 20 and max(drops[1:]) < 1  # the narrow layer's every weight matters; the others' do not
    assert all(np.array_equal(a, b) for a, b in zip(before, trained.get_weights()))  # model left as it was
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sensitivity: ")]
    assert len(lines) == 3 and "narrow (dense, 32 weights): pruned to 50%" in lines[0]


def test_int8_arm_gives_a_sane_accuracy_per_layer_or_says_why_it_skipped(trained, splits):
    val = as_input(splits["val"])
    result = sensitivity.measure(trained, as_input(splits["train"]), val, measured_with(quantize=True),
                                 batch_size=32, seed=0)
    for row in result.layers:
        assert row.int8_skipped is None
        # Calibrated int8 ranges: close to float, far from chance (1/3). Uncalibrated TFMOT ranges are [-6, 6].
        assert row.int8_accuracy >= result.reference_accuracy - 0.03, row
        assert row.int8_drop_pp == pytest.approx(100 * (result.reference_accuracy - row.int8_accuracy), abs=1e-3)

    inputs = keras.Input((4, 4, 1))
    x = L.Conv1D(4, 2, name="conv1d")(L.Reshape((16, 1))(inputs))
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="out")(L.Flatten()(x)))
    rows = {row.layer: row for row in sensitivity.measure(model, as_input(splits["train"]), val,
                                                          measured_with(quantize=True), batch_size=32,
                                                          seed=0).layers}
    assert set(rows) == {"conv1d", "out"}
    assert rows["conv1d"].int8_accuracy is None and "'conv1d' (Conv1D) is not supported" in rows["conv1d"].int8_skipped
    assert rows["out"].int8_skipped is None and rows["out"].int8_accuracy is not None


def test_a_fine_tune_gives_every_variant_and_the_reference_the_same_budget_and_repeats(trained, splits):
    train, val = as_input(splits["train"]), as_input(splits["val"])
    fine_tuned = measured_with(epochs=1, quantize=True)
    first = sensitivity.measure(trained, train, val, fine_tuned, batch_size=64, seed=5)
    again = sensitivity.measure(trained, train, val, fine_tuned, batch_size=64, seed=5)
    assert first == again  # seeded: the same figures to the last digit
    # The reference is the model fine-tuned with that budget, not the one handed in.
    copy = keras.models.clone_model(trained)
    copy.set_weights(trained.get_weights())
    seeding.seed_everything(5)
    training.fit(copy, train, val, epochs=1, batch_size=64, learning_rate=0.001)
    assert first.reference_accuracy == pytest.approx(val_accuracy(copy, val), abs=1e-6)
    assert first.layers[0].layer == "narrow"


@pytest.mark.parametrize("key, value, fragment", [
    ("sparsity", 1.0, "sensitivity.sparsity must be a fraction in (0, 1), got 1.0"),
    ("sparsity", 0, "sensitivity.sparsity must be a fraction"),
    ("quantize", "yes", "sensitivity.quantize must be true or false"),
    ("epochs", -1, "sensitivity.epochs must be a whole number of epochs >= 0"),
    ("epochs", 1.5, "sensitivity.epochs must be a whole number"),
    ("learning_rate", 0, "sensitivity.learning_rate must be a positive number"),
    ("calibration_batches", 0, "sensitivity.calibration_batches must be a whole number >= 1"),
])
def test_a_bad_sensitivity_value_stops_the_stage_before_any_work(tmp_path, monkeypatch, key, value, fragment):
    monkeypatch.chdir(tmp_path)  # no data, no model: a stage that read first would fail otherwise
    params = OmegaConf.load(REPO / "params.yaml")
    params.sensitivity[key] = value
    with pytest.raises(UserError) as raised:
        load_stage("sensitivity").run(params)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("overrides, fragment", [
    ({"auto_max_drop": 0}, "prune.auto_max_drop must be a number of percentage points > 0, got 0"),
    ({"auto_max_drop": "1pp"}, "prune.auto_max_drop must be a number"),
    ({"auto_max_drop": None}, "prune.auto_max_drop must be a number"),
    ({"m_by_n": "2:4"}, "prune.layers=auto measures unstructured pruning, not prune.m_by_n='2:4'"),
])
def test_a_bad_auto_setting_stops_the_prune_stage_before_any_work(tmp_path, monkeypatch, overrides, fragment):
    monkeypatch.chdir(tmp_path)
    params = OmegaConf.load(REPO / "params.yaml")
    params.prune.layers = "auto"
    for key, value in overrides.items():
        params.prune[key] = value
    with pytest.raises(UserError) as raised:
        load_stage("prune").run(params)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


# --- the stages, in-process on a tiny workspace ------------------------------------------------------

@pytest.fixture
def workspace(tmp_path, monkeypatch, splits, trained):
    """A project folder with the prepared splits, the fragile model as the baseline, and params.yaml."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    prepare.write_prepared(paths.PREPARED, {name: [split] for name, split in splits.items()}, ["a", "b", "c"],
                        image_size=4, channels=1)
    save_model(trained, paths.keras_model("baseline"))
    params = OmegaConf.load(REPO / "params.yaml")
    params.seed = 0
    params.train.batch_size = 32
    params.prune.update(layers="auto", auto_max_drop=1.0, final_sparsity=0.5, epochs=1, frequency=2)
    params.sensitivity.update(sparsity=0.5, calibration_batches=2)
    OmegaConf.save(params, "params.yaml")
    return tmp_path


def test_prune_auto_prunes_exactly_the_layers_within_the_threshold_and_says_why(workspace, trained, splits,
                                                                                 capsys):
    measured = sensitivity.measure(trained, as_input(splits["train"]), as_input(splits["val"]), measured_with(),
                                   batch_size=32, seed=0)
    expected = [row.layer for row in measured.layers if row.pruned_drop_pp <= 1.0]
    assert expected and len(expected) < len(measured.layers)  # the threshold separates the layers

    load_stage("prune").run(OmegaConf.load("params.yaml"))
    out = capsys.readouterr().out
    layers = read_json(paths.stage_reports("prune") / "layers.json")
    chosen = [name for name, flag in layers["auto_chosen"].items() if flag]
    assert sorted(chosen) == sorted(expected)
    assert layers["auto_drop_pp"] == {row.layer: row.pruned_drop_pp for row in measured.layers}
    sparsity = weights.sparsity_report(load_model(paths.keras_model("pruned")))["layers"]
    # Ties at the threshold are kept (TFMOT's rule), and L1 leaves many equal tiny weights: about, not exactly, 0.5.
    assert all(sparsity[name] > 0.4 for name in expected) and sparsity["narrow"] == 0.0, sparsity
    assert (f"prune: auto: skipped narrow: pruned alone to 50% it costs "
            f"{measured.layers[0].pruned_drop_pp:.2f} pp of validation accuracy > prune.auto_max_drop=1") in out
    for name in expected:
        assert f"prune: auto: chosen  {name}: pruned alone to 50% it costs" in out
    assert f"prune: auto chose {len(expected)} of 3 layers" in out


def test_prune_auto_with_no_layer_under_the_threshold_names_the_least_sensitive(trained, splits):
    cfg = settings.parse("prune", {**OmegaConf.to_container(OmegaConf.load(REPO / "params.yaml").prune),
                                   "schedule": "constant", "target_sparsity": 0.99, "auto_max_drop": 0.01,
                                   "learning_rate": 0.001, "layers": "auto"})
    with pytest.raises(UserError, match=r"prune.layers=auto: no layer stays within prune.auto_max_drop=0.01 pp "
                                        r"at 99% sparsity \(the least sensitive, \w+, costs [\d.]+ pp\): raise "
                                        r"prune.auto_max_drop to at least [\d.]+"):
        sensitivity.choose_layers_to_prune(trained, as_input(splits["train"]), as_input(splits["val"]), cfg,
                                           batch_size=32, seed=0)


def test_the_sensitivity_stage_writes_the_rows_the_plot_data_the_png_and_an_mlflow_run(workspace):
    result = load_stage("sensitivity").run(OmegaConf.load("params.yaml"))
    folder = paths.stage_reports("sensitivity")
    written = read_json(folder / "layers.json")
    assert written["split"] == "val" and written["layers"] == result["layers"]
    assert written["layers"][0]["layer"] == "narrow" and len(written["layers"]) == 3
    csv_lines = (folder / "layers.csv").read_text().splitlines()
    assert csv_lines[0].startswith("layer,kind,weights,pruned_drop_pp,int8_drop_pp")
    assert [line.split(",")[0] for line in csv_lines[1:]] == [row["layer"] for row in written["layers"]]
    assert (folder / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (logged,) = mlflow_runs(workspace, stage="sensitivity")
    assert logged.data.metrics["worst_pruned_drop_pp"] == max(r["pruned_drop_pp"] for r in written["layers"])
    assert logged.data.params["sensitivity.sparsity"] == "0.5"
    png = (folder / "layers.png").read_bytes()
    load_stage("sensitivity").run(OmegaConf.load("params.yaml"))
    assert (folder / "layers.png").read_bytes() == png  # repeats byte for byte
    assert json.loads((folder / "layers.json").read_text()) == written


# --- end to end: the real dvc ------------------------------------------------------------------------

@pytest.mark.slow(minutes=0.5)
def test_dvc_runs_sensitivity_only_when_asked_and_a_plain_repro_leaves_it_alone(project):
    from compresslab.techniques.sensitivity import prunable_layers

    folder = project / "reports" / "sensitivity"
    restore_committed(project)  # earlier tests may have left an experiment applied
    try:
        # what `make sensitivity` runs: the measurement, then drops.md from it and the report's variants.csv
        result = run(["dvc", "repro", "analysis/dvc.yaml"], project)
        assert stages_ran(result.stdout) == ["analysis/dvc.yaml:sensitivity",   # the default stages are cached
                                             "analysis/dvc.yaml:sensitivity_drops"]
        assert (folder / "drops.md").read_text().startswith("# Which layers explain the drops")
        written = read_json(folder / "layers.json")
        names, _ = prunable_layers(load_model(project / "models" / "baseline.keras"), "test")
        assert sorted(row["layer"] for row in written["layers"]) == sorted(names)
        assert (folder / "layers.png").stat().st_size > 0
        (logged,) = mlflow_runs(project, stage="sensitivity")
        assert logged.data.metrics["reference_accuracy"] == written["reference_accuracy"]
        assert logged.data.tags["dvc.dep.models/baseline.keras"]  # lineage found the stage in analysis/
        again = run(["dvc", "repro"], project)
        assert stages_ran(again.stdout) == []
        status = json.loads(run(["dvc", "status", "--json"], project).stdout or "{}")
        assert status == {}  # the analysis is recorded in analysis/dvc.lock and up to date
        assert "analysis/dvc.yaml:sensitivity" in run(["dvc", "dag"], project).stdout
    finally:
        for path in (*folder.glob("*"), project / "analysis" / "dvc.lock"):
            path.unlink(missing_ok=True)
        restore_committed(project)


def test_drops_md_sets_each_significant_loss_beside_what_the_int8_ranges_cost():
    from compresslab.reporting.sensitivity_files import drops_markdown

    result = {"figure": "mAP", "reference_accuracy": 0.55, "images": 150, "layers": [
        {"layer": "head", "int8_drop_pp": 0.1}, {"layer": "stem", "int8_drop_pp": 0.05},
        {"layer": "mid", "int8_drop_pp": -0.02}, {"layer": "odd", "int8_drop_pp": None}]}
    header = "variant,mode,map_delta_pp,significant,map_delta_control_pp,significant_control\n"
    table = header + ("baseline,float32,0.0,False,,\nbaseline,int8,-0.2,False,-0.3,False\n"
                      "finetune,float32,0.1,False,0.0,False\nqat,int8,-4.0,True,-4.21,True\n"
                      "clustered,float32,-3.0,True,-3.1,True\n")
    text = drops_markdown(result, table)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert set(lines) == {"file", "---", "qat-int8", "clustered-float32"}
    assert "(worst: head (+0.10), stem (+0.05), mid (-0.02))" in text and "-0.20 points, not significant" in text
    assert "-4.21" in lines["qat-int8"] and "not the int8 ranges" in lines["qat-int8"]
    assert "fine-tuning under the quantization wrappers" in lines["qat-int8"]
    assert "not an int8 file" in lines["clustered-float32"]
    # when full-integer ranges cost the baseline most of a file's loss, the worst layers are named
    ranges = header + "baseline,int8,-3.5,True,-3.6,True\nqat,int8,-4.0,True,-4.21,True\n"
    named = {line.split(" | ")[0].lstrip("| "): line for line in drops_markdown(result, ranges).splitlines()}
    assert "keep the worst layers (head, stem, mid) in float" in named["qat-int8"]
    assert "keep the worst" in named["baseline-int8"]
    assert "nothing to explain" in drops_markdown(result, header + "qat,int8,1.0,True,1.0,True\n")


def test_the_drops_stage_without_its_inputs_is_one_line_naming_the_command(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "stages" / "sensitivity_drops.py")], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "dvc repro analysis/dvc.yaml" in result.stderr
