"""The schema of params.yaml (compresslab.settings): what conf/ composes validates, typos and wrong types are one
line naming the key, and what passes keeps the type it was written with."""

import pydantic
import pytest
import yaml
from dvc.utils.hydra import compose_and_dump
from omegaconf import OmegaConf

from compresslab import settings
from compresslab.errors import UserError
from conftest import REPO

GROUPS = tuple(settings.GROUPS)


def params(**groups) -> OmegaConf:
    """params.yaml with some groups' keys replaced."""
    loaded = OmegaConf.load(REPO / "params.yaml")
    for group, values in groups.items():
        loaded[group] = {**OmegaConf.to_container(loaded[group]), **values}
    return loaded


def refusal(**groups) -> str:
    with pytest.raises(UserError) as raised:
        settings.read(params(**groups), *groups)
    assert "\n" not in str(raised.value)
    return str(raised.value)


def test_every_group_of_the_committed_params_yaml_has_a_schema():
    assert set(OmegaConf.load(REPO / "params.yaml")) == set(GROUPS)  # `experiment` appears with a preset only


@pytest.mark.parametrize("overrides", [[], ["prune=constant"], ["quantize=dense_only"], ["quantize=conv_only"],
                                       *([f"experiment={preset.stem}"]
                                         for preset in sorted((REPO / "conf" / "experiment").glob("*.yaml")))])
def test_what_conf_composes_validates_in_every_group(tmp_path, overrides):
    composed = tmp_path / "params.yaml"
    compose_and_dump(composed, str(REPO / "conf"), None, "config", str(REPO), overrides)
    typed = settings.read(OmegaConf.load(composed), *GROUPS)
    assert [type(value) for value in typed] == [int, *(settings.GROUPS[group] for group in GROUPS[1:])]


def test_a_typo_in_a_key_is_refused_naming_the_key_and_the_keys_there_are():
    message = refusal(prune={"final_sparsty": 0.8})
    assert message.startswith("prune has unknown key(s) ['final_sparsty']: use ")
    assert "final_sparsity" in message and "m_by_n" in message


def test_a_typo_inside_a_nested_group_names_the_nested_group():
    assert refusal(data={"augment": {"flip": True, "flipp": True}}) == \
        "data.augment has unknown key(s) ['flipp']: use flip, crop, brightness"


def test_an_unknown_key_is_named_before_the_key_it_was_meant_to_be():
    values = OmegaConf.to_container(OmegaConf.load(REPO / "params.yaml").prune)
    values["frequncy"] = values.pop("frequency")
    with pytest.raises(UserError, match=r"prune has unknown key\(s\) \['frequncy'\]"):
        settings.parse("prune", values)


def test_a_missing_key_is_named_with_its_group():
    values = OmegaConf.to_container(OmegaConf.load(REPO / "params.yaml").convert)
    del values["modes"]
    with pytest.raises(UserError, match=r"^convert.modes is not set: add it to conf/"):
        settings.parse("convert", values)


def test_a_missing_group_is_named():
    loaded = OmegaConf.load(REPO / "params.yaml")
    del loaded["pcqat"]
    with pytest.raises(UserError, match=r"params.yaml lacks \['pcqat'\]"):
        settings.read(loaded, "cluster", "pcqat")


@pytest.mark.parametrize("group, key, value, fragment", [
    ("train", "epochs", True, "train.epochs must be a positive number, got True"),
    ("train", "batch_size", 8.5, "train.batch_size must be a whole number of images, got 8.5"),
    ("train", "patience", -1, "train.patience must be a whole number of epochs >= 0"),
    ("cluster", "number_of_clusters", True, "cluster.number_of_clusters must be an integer of at least 2"),
    ("cluster", "per_channel", 1, "cluster.per_channel must be true or false, got 1"),
    ("data", "channels", True, "data.channels must be 1 (grayscale) or 3 (RGB), got True"),
    ("data", "seed", "42", "data.seed must be a whole number >= 0, got '42'"),
    ("convert", "calibration_samples", 2.0, "convert.calibration_samples must be a positive integer, got 2.0"),
    ("convert", "sparse_weights", "no", "convert.sparse_weights must be true or false, got 'no'"),
    ("evaluate", "threads", [1, True], "evaluate.threads=[1, True] must be a non-empty list"),
    ("evaluate", "min_seconds", "1s", "evaluate.min_seconds must be a number of seconds >= 0"),
    ("evaluate", "measure_memory", "yes", "evaluate.measure_memory must be true or false"),
    ("prune", "target_sparsity", 1.5, "prune.target_sparsity must be a fraction in [0, 1), got 1.5"),
    ("prune", "layers", "xnnpack", None),
    ("finetune", "learning_rate", "1e-3", "finetune.learning_rate must be a positive number, got '1e-3'"),
    ("model", "alpha", 0, "model.alpha must be a width multiplier above 0, got 0"),
    ("model", "hidden_units", [80, 0], "model.hidden_units=[80, 0] must be a non-empty list of positive"),
    ("model", "alpah", 0.35, "model has unknown key(s) ['alpah']: use name, hidden_units, dropout, alpha"),
])
def test_each_group_refuses_a_value_of_the_wrong_type_or_range_naming_the_key(group, key, value, fragment):
    if fragment is None:  # a valid value: read without error
        settings.read(params(**{group: {key: value}}), group)
        return
    assert fragment in refusal(**{group: {key: value}})


def test_the_seed_is_checked_like_a_group():
    loaded = OmegaConf.load(REPO / "params.yaml")
    loaded.seed = -1
    with pytest.raises(UserError, match=r"^seed must be a whole number >= 0, got -1"):
        settings.read(loaded, "seed")


def test_numbers_keep_the_type_they_were_written_with_so_tensorflow_gets_the_same_values():
    train, prune, evaluate = settings.read(params(train={"learning_rate": 1}, prune={"learning_rate": 0.0005}),
                                           "train", "prune", "evaluate")
    assert type(train.learning_rate) is int and type(prune.learning_rate) is float
    assert type(train.epochs) is int and type(prune.final_sparsity) is float and type(prune.frequency) is int
    assert evaluate.threads == [1, 2] and type(evaluate.min_seconds) is float


def test_an_interpolation_to_another_group_is_read_resolved():
    loaded = params(prune={"epochs": 7})
    loaded.finetune.epochs = "${prune.epochs}"  # as conf/finetune writes it (Hydra resolves it when composing)
    (finetune,) = settings.read(loaded, "finetune")
    assert finetune.epochs == 7


def test_a_quoted_m_by_n_pattern_becomes_a_pair_and_an_unquoted_one_says_to_quote_it():
    (prune,) = settings.read(OmegaConf.create({"prune": {**OmegaConf.to_container(params().prune),
                                                         "m_by_n": OmegaConf.create("m: '2:4'").m}}), "prune")
    assert prune.m_by_n == (2, 4) and prune.pattern == "2:4"
    assert "quote it in YAML" in refusal(prune={"m_by_n": OmegaConf.create("m: 2:4").m})


def test_a_group_is_frozen():
    (prune,) = settings.read(params(), "prune")
    with pytest.raises(pydantic.ValidationError):
        prune.final_sparsity = 0.9
    assert prune.model_copy(update={"layers": ["dense"]}).layers == ["dense"] and prune.layers == "all"


def test_pcqat_checks_the_cluster_group_against_its_own():
    assert refusal(cluster={"number_of_clusters": 2}, pcqat={}).startswith(
        "cluster.number_of_clusters=2 is too few for pcqat")
    settings.read(params(cluster={"number_of_clusters": 2}), "cluster")  # the cluster stage alone takes 2


def test_the_augment_group_may_be_left_out_and_then_augments_nothing():
    values = yaml.safe_load((REPO / "params.yaml").read_text())["data"]
    del values["augment"], values["shuffle_buffer"]
    data = settings.parse("data", values)
    assert data.augment is None and data.shuffle_buffer == settings.SHUFFLE_BUFFER
    assert not settings.AugmentConfig().augmenting and settings.AugmentConfig(crop=2).augmenting


@pytest.mark.parametrize("overrides, described", [
    ({}, "polynomial schedule to 50% on all"),
    ({"final_sparsity": 0.0}, "polynomial schedule to 0% on all"),   # `final_sparsity or target` read 0 as unset
    ({"schedule": "constant", "target_sparsity": 0.8}, "constant schedule to 80% on all"),
    ({"m_by_n": "2:4", "layers": "dense"}, "2:4 structured on dense"),
    ({"layers": "auto", "auto_max_drop": 1.0}, "polynomial schedule to 50% on the layers whose validation accuracy "
                                               "drops at most 1 pp when pruned alone (auto)"),
])
def test_the_prune_group_says_in_words_what_it_prunes(overrides, described):
    values = {"name": "t", "schedule": "polynomial", "initial_sparsity": 0.0, "final_sparsity": 0.5,
              "target_sparsity": None, "begin_step": None, "end_step": None, "frequency": 2, "layers": "all",
              "auto_max_drop": 1.0, "m_by_n": None, "epochs": 1, "learning_rate": 1e-3}
    assert settings.parse("prune", {**values, **overrides}).describe() == described
