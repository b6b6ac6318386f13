"""Bad input through the real entry points: one line on stderr naming the problem, exit code 2, no traceback,
raised before any data is read, and nothing already produced touched. Also the sample data: its hash is the
one data.dvc records."""

import importlib.util
import json
import shutil

import pytest
import yaml
from omegaconf import OmegaConf

from compresslab.errors import UserError
from conftest import REPO, copy_project, run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("tiny"))


def set_param(root, group, key, value):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[group][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def load_stage(name):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tf_config, fragment", [
    (None, "needs the TF_CONFIG environment variable"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": ', "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}', "not a member"),
])
def test_a_multi_worker_run_without_a_usable_tf_config_stops_before_training(tmp_path, monkeypatch, tf_config,
                                                                            fragment):
    monkeypatch.chdir(tmp_path)
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    params = OmegaConf.load(REPO / "params.yaml")
    params.train.strategy = "multi_worker"
    with pytest.raises(UserError, match=fragment) as raised:
        load_stage("train").run(params)
    assert "\n" not in str(raised.value) and 'set TF_CONFIG on every worker' in str(raised.value)


@pytest.mark.parametrize("stage, group, key, value, fragments", [
    ("prepare", "data", "image_size", 4, ["data.image_size", "at least 8"]),
    ("train", "train", "epochs", 0, ["train.epochs", "positive"]),
    ("train", "train", "learning_rate", -1.0, ["train.learning_rate"]),
    ("train", "train", "optimizer", "adamw", ["unknown optimizer 'adamw'"]),
    ("train", "train", "strategy", "horovod", ["train.strategy='horovod' does not exist", "mirrored"]),
    ("pcqat", "train", "strategy", "tpu", ["train.strategy='tpu'"]),
    ("train", "data", "shuffle_buffer", 0, ["data.shuffle_buffer", "positive"]),
    ("prune", "data", "augment", {"flip": "yes"}, ["data.augment.flip", "true or false"]),
    ("quantize", "data", "augment", {"crop": 40}, ["data.augment.crop=40", "below half"]),
    ("cluster", "data", "augment", {"rotate": 10}, ["data.augment has unknown key", "brightness"]),
    ("finetune", "finetune", "epochs", 3.0, ["finetune.epochs", "whole number"]),
    ("prune", "prune", "final_sparsity", 1.2, ["prune.final_sparsity"]),
    ("prune", "prune", "m_by_n", "3:2", ["prune.m_by_n"]),
    ("prune", "prune", "epochs", 3.0, ["prune.epochs", "whole number"]),
    ("quantize", "quantize", "epochs", 0, ["quantize.epochs"]),
    ("pqat", "pqat", "learning_rate", 0, ["pqat.learning_rate"]),
    ("cluster", "cluster", "number_of_clusters", 1, ["cluster.number_of_clusters"]),
    ("cluster", "cluster", "centroid_init", "median", ["cluster.centroid_init"]),
    ("cluster", "cluster", "epochs", 3.0, ["cluster.epochs", "whole number"]),
    ("cqat", "cqat", "epochs", 2.5, ["cqat.epochs"]),
    ("convert baseline", "convert", "modes", ["int3"], ["convert.modes"]),
    ("convert baseline", "convert", "mixed", {"ratio": 12, "precisions": ["int2"]}, ["convert.mixed.precisions"]),
    ("convert baseline", "convert", "mixed", {"ratio": 12, "bytes": 9000}, ["exactly one of bytes and ratio"]),
    ("convert baseline", "convert", "mixed", {"ratio": 1}, ["convert.mixed.ratio", "above 1"]),
    ("convert baseline", "convert", "mixed", {"ratio": 8, "variants": ["qat"]}, ["convert.mixed.variants", "pruned"]),
    ("convert vgg", "convert", "int8_io", False, ["unknown variant 'vgg'", "baseline"]),
    ("evaluate baseline", "evaluate", "threads", [], ["evaluate.threads"]),
    ("evaluate baseline", "evaluate", "min_runs", 0, ["evaluate.min_runs"]),
    ("evaluate baseline", "evaluate", "profile_seconds", -1, ["evaluate.profile_seconds", ">= 0"]),
    ("report", "evaluate", "threads", [1], ["no evaluation of baseline"]),
])
def test_bad_config_stops_the_stage_before_it_reads_any_data(tmp_path, monkeypatch, stage, group, key, value,
                                                             fragments):
    monkeypatch.chdir(tmp_path)  # no data/prepared, no models: a stage that read first would fail otherwise
    params = OmegaConf.load(REPO / "params.yaml")
    params[group][key] = value
    name, *args = stage.split()
    module = load_stage(name)
    with pytest.raises(UserError) as raised:
        module.run(params, *args)
    for fragment in fragments:
        assert fragment in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.slow
@pytest.mark.parametrize("stage, group, key, value, fragments", [
    ("train", "train", "epochs", 0, ["train.epochs", "positive"]),
    ("evaluate baseline", "evaluate", "threads", [], ["evaluate.threads"]),
])
def test_a_bad_config_is_one_line_on_stderr_and_exit_code_2(tiny, stage, group, key, value, fragments):
    original = (tiny / "params.yaml").read_text()
    set_param(tiny, group, key, value)
    try:
        result = run(["python", f"stages/{stage.split()[0]}.py", *stage.split()[1:]], tiny, check=False)
    finally:
        (tiny / "params.yaml").write_text(original)
    assert_one_line_error(result, *fragments)


@pytest.mark.slow
def test_unknown_model_fails_before_training_and_keeps_the_old_model(tiny):
    run(["dvc", "repro", "train"], tiny)
    model = tiny / "models" / "baseline.keras"
    before = model.read_bytes()
    original = (tiny / "params.yaml").read_text()
    set_param(tiny, "model", "name", "vgg16")
    try:
        result = run(["python", "stages/train.py"], tiny, check=False)
    finally:
        (tiny / "params.yaml").write_text(original)
    assert_one_line_error(result, "unknown model 'vgg16'", "firenet")
    assert model.read_bytes() == before and "Epoch" not in result.stdout


@pytest.mark.slow
def test_missing_or_broken_data_is_a_one_line_error(tiny):
    raw = tiny / "data" / "raw"
    moved = tiny / "raw-away"
    raw.rename(moved)
    try:
        assert_one_line_error(run(["python", "stages/prepare.py"], tiny, check=False), "does not exist")
        raw.mkdir()
        assert_one_line_error(run(["python", "stages/prepare.py"], tiny, check=False), "no class sub-folders")
        (raw / "only").mkdir()
        assert_one_line_error(run(["python", "stages/prepare.py"], tiny, check=False), "at least two")
    finally:
        if raw.exists():
            shutil.rmtree(raw)
        moved.rename(raw)


@pytest.mark.slow
def test_sample_data_hash_equals_data_dvc_on_a_fresh_clone(tmp_path):
    root = copy_project(tmp_path, preset=None, sample_data=True)
    status = json.loads(run(["dvc", "status", "--json", "data.dvc"], root).stdout or "{}")
    assert status == {}
    assert len(list((root / "data" / "raw").rglob("*.png"))) == 5000
    refused = run(["compresslab", "sample-data", "--out", "conf"], root, check=False)
    assert_one_line_error(refused, "already holds other data")


@pytest.mark.slow
def test_the_detection_sample_hash_equals_data_detection_dvc_on_a_fresh_clone(tmp_path):
    root = copy_project(tmp_path, preset=None)
    shutil.copy2(REPO / "data_detection.dvc", root / "data_detection.dvc")   # copies leave it behind (sandbox.py)
    written = run(["compresslab", "sample-data", "--task", "detection"], root)
    assert "checked the sample against data_detection.dvc" in written.stdout
    status = json.loads(run(["dvc", "status", "--json", "data_detection.dvc"], root).stdout or "{}")
    assert status == {}
    assert len(list((root / "data" / "raw_detection" / "Annotations").glob("*.xml"))) == 1000
    (root / "data" / "raw_detection" / "mine.txt").write_text("a user's file")
    refused = run(["compresslab", "sample-data", "--task", "detection"], root, check=False)
    assert_one_line_error(refused, "already holds other data")


def test_a_library_error_that_escapes_a_stage_is_one_line_naming_the_stage(tmp_path):
    stage = tmp_path / "stages" / "pcqat.py"
    stage.parent.mkdir()
    stage.write_text("import compresslab\nfrom compresslab.errors import run_main\n\n\ndef main():\n"
                     "    import tensorflow as tf\n    tf.reshape(tf.constant([1, 2, 3]), (2, 2))\n\n\n"
                     "run_main(main)\n")
    failed = run(["python", str(stage)], tmp_path, check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("error: stage pcqat: TensorFlow failed (InvalidArgumentError: ") and \
        "COMPRESSLAB_TRACEBACK=1" in line
    shown = run(["python", str(stage)], tmp_path, check=False, env={"COMPRESSLAB_TRACEBACK": "1"})
    assert shown.returncode == 1 and "Traceback (most recent call last)" in shown.stderr
