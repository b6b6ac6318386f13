"""Tests for compresslab.pruning: config checks, schedules, layer selection and measured sparsity (real TFMOT)."""

import compresslab  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from omegaconf import OmegaConf

from compresslab import settings
from compresslab.techniques import pruning
from compresslab.techniques import weights
from compresslab.errors import UserError
from conftest import firenet_like

L = keras.layers
BATCH = 16  # 64 samples -> 4 steps per epoch


def prune_values(**overrides):
    cfg = {"name": "test", "schedule": "polynomial", "initial_sparsity": 0.0, "final_sparsity": 0.5,
           "target_sparsity": 0.5, "begin_step": None, "end_step": None, "frequency": 2, "layers": "all",
           "m_by_n": None, "epochs": 3, "learning_rate": 1e-3}
    cfg.update(overrides)
    return cfg


def prune_cfg(**overrides) -> settings.PruneConfig:
    return settings.parse("prune", prune_values(**overrides))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 4), dtype=np.float32)
    y = rng.integers(0, 3, 64)
    return x, y


def one_channel(data):
    return data[0][..., :1], data[1]


def schedule_at(schedule, step):
    should_prune, sparsity = schedule(tf.constant(step, tf.int64))
    return bool(should_prune), float(sparsity)


# --- schedules ---------------------------------------------------------------------------------------

def test_polynomial_schedule_derives_steps_and_reaches_final_sparsity():
    # 3 epochs x 4 steps = 12 steps; end = floor(0.9 * 12) = 10, on the frequency-2 grid.
    schedule = pruning.build_schedule(prune_cfg(initial_sparsity=0.1, final_sparsity=0.8), 4)
    config = schedule.get_config()["config"]
    assert (config["begin_step"], config["end_step"], config["frequency"]) == (0, 10, 2)
    assert schedule_at(schedule, 0)[1] == pytest.approx(0.1)
    assert schedule_at(schedule, 10) == (True, pytest.approx(0.8))  # a mask update, at the final sparsity
    assert schedule_at(schedule, 11) == (False, pytest.approx(0.8))
    assert 0.1 < schedule_at(schedule, 4)[1] < 0.8


def test_end_step_moves_onto_the_last_mask_update_and_frequency_is_capped():
    schedule = pruning.build_schedule(prune_cfg(frequency=4, epochs=5), 4)  # 20 steps, end 18 -> 16
    assert schedule.get_config()["config"]["end_step"] == 16
    assert schedule_at(schedule, 16) == (True, pytest.approx(0.5))
    # A frequency beyond the pruning span would never update a mask: it is capped to the span.
    schedule = pruning.build_schedule(prune_cfg(frequency=100, begin_step=2, end_step=9), 4)
    config = schedule.get_config()["config"]
    assert (config["begin_step"], config["end_step"], config["frequency"]) == (2, 9, 7)
    assert schedule_at(schedule, 9) == (True, pytest.approx(0.5))


def test_constant_schedule_prunes_at_the_target_from_the_first_update():
    schedule = pruning.build_schedule(prune_cfg(schedule="constant", target_sparsity=0.3), 4)
    assert isinstance(schedule, pruning.tfmot.sparsity.keras.ConstantSparsity)
    assert schedule_at(schedule, 2) == (True, pytest.approx(0.3))
    assert schedule_at(schedule, 3) == (False, pytest.approx(0.3))


def test_schedule_steps_outside_the_fine_tune_are_refused():
    with pytest.raises(UserError, match=r"prune.end_step=50 is past the last fine-tuning step \(12"):
        pruning.build_schedule(prune_cfg(end_step=50), 4)
    with pytest.raises(UserError, match=r"prune.begin_step=12 is at or past the last fine-tuning step"):
        pruning.build_schedule(prune_cfg(begin_step=12), 4)
    # The constant schedule holds its sparsity, so a late end_step is only clipped.
    schedule = pruning.build_schedule(prune_cfg(schedule="constant", end_step=50), 4)
    assert schedule.get_config()["config"]["end_step"] == 12


# --- validation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    ({"schedule": "cubic"}, r"prune.schedule='cubic' is not a pruning schedule"),
    ({"final_sparsity": 1.0}, r"prune.final_sparsity must be a fraction in \[0, 1\)"),
    ({"final_sparsity": -0.1}, r"prune.final_sparsity must be a fraction"),
    ({"final_sparsity": None}, r"prune.final_sparsity must be a fraction"),
    ({"schedule": "constant", "target_sparsity": 1.5}, r"prune.target_sparsity must be a fraction"),
    ({"initial_sparsity": 1.0}, r"prune.initial_sparsity must be a fraction"),
    ({"initial_sparsity": 0.6}, r"prune.initial_sparsity=0.6 is above prune.final_sparsity=0.5"),
    ({"begin_step": 10, "end_step": 10}, r"prune.begin_step=10 is not before prune.end_step=10"),
    ({"end_step": 0}, r"prune.begin_step=0 is not before prune.end_step=0"),
    ({"begin_step": -1}, r"prune.begin_step must be a whole number of training steps >= 0"),
    ({"end_step": -1}, r"prune.end_step must be a whole number"),
    ({"frequency": 0}, r"prune.frequency must be a whole number of steps > 0"),
    ({"frequency": 2.5}, r"prune.frequency must be a whole number"),
    ({"m_by_n": "4:2"}, r"prune.m_by_n='4:2' is not a pattern TFMOT can apply: it needs 1 <= m < n"),
    ({"m_by_n": "0:4"}, r"1 <= m < n"),
    ({"m_by_n": "2x4"}, r"prune.m_by_n='2x4' is not an m-by-n pattern: use a string like \"2:4\""),
    ({"m_by_n": 124}, r"prune.m_by_n=124 is a number.*quote it"),
    ({"epochs": 0}, r"prune.epochs must be a positive number"),
    ({"epochs": 1.5}, r"prune.epochs must be a whole number"),
    ({"learning_rate": 0}, r"prune.learning_rate must be a positive number"),
    ({"layers": None}, r"prune.layers is not set"),
])
def test_invalid_config_is_a_user_error(overrides, message):
    with pytest.raises(UserError, match=message):
        settings.parse("prune", prune_values(**overrides))


def test_valid_configs_pass_including_omegaconf_and_yaml_quoted_pattern():
    settings.read(OmegaConf.create({"prune": prune_values(begin_step=0, end_step=8, m_by_n="2:4")}), "prune")
    assert settings.parse_m_by_n(OmegaConf.create("m: '2:4'").m) == (2, 4)
    # Unquoted in YAML, 2:4 is the base-60 integer 124: that is what the check above catches.
    assert OmegaConf.create("m: 2:4").m == 124


def test_m_by_n_is_checked_before_training(data):
    # TFMOT itself only asserts m < n inside the first training step (an InvalidArgumentError mid-fit).
    with pytest.raises(UserError, match="prune.m_by_n='4:2'"):
        pruning.prune(firenet_like(), prune_cfg(m_by_n="4:2", epochs=1000), one_channel(data),
                      one_channel(data), batch_size=BATCH)


# --- pruning a model ----------------------------------------------------------------------------------

def test_dense_only_polynomial_prune_reaches_target_and_leaves_conv_and_input_alone(data):
    keras.utils.set_random_seed(0)
    model = firenet_like()
    original = [w.copy() for w in model.get_weights()]
    result = pruning.prune(model, prune_cfg(layers="dense", final_sparsity=0.6), one_channel(data),
                           one_channel(data), batch_size=BATCH)
    assert result.pruned_layers == ["fc", "out"] and result.skipped_layers == {}
    assert result.target_sparsity == 0.6
    assert set(result.sparsity["layers"]) == {"fc", "out"}
    for name, value in result.sparsity["layers"].items():
        assert value == pytest.approx(0.6, abs=0.02), name
    assert result.sparsity["overall"] == pytest.approx(0.6, abs=0.02)
    assert weights.sparsity_report(result.model, ["conv"])["overall"] == 0.0
    assert not any(isinstance(layer, keras.layers.Wrapper) for layer in result.model.layers)
    assert len(result.history["loss"]) == 3
    assert all(np.array_equal(a, b) for a, b in zip(original, model.get_weights()))


def test_constant_prune_of_all_layers_reaches_target(data):
    keras.utils.set_random_seed(1)
    result = pruning.prune(firenet_like(), prune_cfg(schedule="constant", target_sparsity=0.7, frequency=3),
                           one_channel(data), one_channel(data), batch_size=BATCH)
    assert result.pruned_layers == ["conv", "fc", "out"]
    for name, value in result.sparsity["layers"].items():
        assert value == pytest.approx(0.7, abs=0.02), name


def blocks_of_four(kernel):
    """TFMOT's m-by-n layout: blocks run along the input channels, one row per output unit (and position)."""
    rows = np.moveaxis(kernel, -1, 0).reshape(-1, kernel.shape[-2])
    return rows.reshape(-1, 4)


def test_m_by_n_2_4_puts_two_zeros_in_every_block_of_four(data):
    keras.utils.set_random_seed(2)
    model = firenet_like(channels=4)  # conv has 4 input channels, fc 36, out 16: all multiples of 4
    result = pruning.prune(model, prune_cfg(m_by_n="2:4", epochs=2), data, data, batch_size=BATCH)
    assert result.pruned_layers == ["conv", "fc", "out"] and result.target_sparsity == 0.5
    for name, kernel in weights.kernels(result.model).items():
        zeros = (blocks_of_four(kernel) == 0).sum(axis=1)
        assert (zeros >= 2).all(), name
    assert result.sparsity["overall"] == pytest.approx(0.5, abs=0.01)


def test_layers_tfmot_cannot_prune_are_skipped_and_listed(data):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1))
    x = L.DepthwiseConv2D(3, name="dw")(inputs)
    x = L.Conv2D(4, 3, name="conv")(x)
    x = L.Flatten()(x)
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="out")(x))
    result = pruning.prune(model, prune_cfg(layers="conv", epochs=1, final_sparsity=0.5), one_channel(data),
                           one_channel(data), batch_size=BATCH)
    assert result.pruned_layers == ["conv"]
    assert "TFMOT prunes no weights of a DepthwiseConv2D" in result.skipped_layers["dw"]
    assert weights.sparsity_report(result.model, ["dw", "out"])["overall"] == 0.0
    with pytest.raises(UserError, match=r"prune.layers=\['dw'\] selects no layer TFMOT can prune"):
        pruning.prune(model, prune_cfg(layers=["dw"]), one_channel(data), one_channel(data), batch_size=BATCH)


def test_m_by_n_skips_kernels_of_other_ranks():
    conv1d = L.Conv1D(4, 3)
    conv1d.build((None, 8, 4))
    assert "rank-2 or rank-4" in pruning.unprunable_reason(conv1d, (2, 4))
    assert pruning.unprunable_reason(conv1d, None) is None


def test_m_by_n_skips_layers_whose_input_channels_are_not_a_multiple_of_n():
    # TFMOT pads a partial block with zeros that then count as pruned: a 3-channel first convolution would come
    # out a third sparse under 2:4 and a 1-channel one not at all, while the report said 50 %.
    rgb = L.Conv2D(8, 3)
    rgb.build((None, 8, 8, 3))
    assert "needs a multiple of 4 input channels, Conv2D has 3" in pruning.unprunable_reason(rgb, (2, 4))
    six = L.Dense(2)
    six.build((None, 6))
    assert "Dense has 6" in pruning.unprunable_reason(six, (2, 4))
    assert pruning.unprunable_reason(six, (1, 2)) is None and pruning.unprunable_reason(six, None) is None


def test_m_by_n_reaches_its_sparsity_on_every_layer_it_prunes(data):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 4))
    x = L.Flatten()(L.Conv2D(4, 3, name="conv")(inputs))
    x = L.Dense(6, activation="relu", name="fc")(x)
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="out")(x))
    result = pruning.prune(model, prune_cfg(m_by_n="2:4", epochs=1), data, data, batch_size=BATCH)
    assert result.pruned_layers == ["conv", "fc"] and "Dense has 6" in result.skipped_layers["out"]
    assert result.sparsity["overall"] == pytest.approx(0.5, abs=0.01)
