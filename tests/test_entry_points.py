"""Bad input through the real entry points: one line on stderr naming the problem, exit code 2, no traceback,
and nothing already produced touched. Also the sample data: its hash is the one data.dvc records."""

import json

import pytest
import yaml

from conftest import copy_project, run

pytestmark = pytest.mark.slow  # copies the project and runs the real stages and `dvc`


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


@pytest.mark.parametrize("stage, group, key, value, fragments", [
    ("prepare", "data", "image_size", 4, ["data.image_size", "at least 8"]),
    ("train", "train", "epochs", 0, ["train.epochs", "positive"]),
    ("train", "train", "learning_rate", -1.0, ["train.learning_rate"]),
    ("prune", "prune", "final_sparsity", 1.2, ["prune.final_sparsity"]),
    ("prune", "prune", "m_by_n", "3:2", ["prune.m_by_n"]),
    ("quantize", "quantize", "epochs", 0, ["quantize.epochs"]),
    ("cluster", "cluster", "number_of_clusters", 1, ["cluster.number_of_clusters"]),
    ("cluster", "cluster", "centroid_init", "median", ["cluster.centroid_init"]),
    ("finetune", "finetune", "epochs", 3.0, ["finetune.epochs", "whole number"]),
    ("convert baseline", "convert", "modes", ["int4"], ["convert.modes"]),
    ("evaluate baseline", "evaluate", "threads", [], ["evaluate.threads"]),
    ("convert vgg", "convert", "int8_io", False, ["unknown variant 'vgg'", "baseline"]),
    ("report", "evaluate", "threads", [1], ["no evaluation of baseline"]),
])
def test_bad_config_stops_the_stage_with_one_line(tiny, stage, group, key, value, fragments):
    original = (tiny / "params.yaml").read_text()
    set_param(tiny, group, key, value)
    try:
        result = run(["python", f"stages/{stage.split()[0]}.py", *stage.split()[1:]], tiny, check=False)
    finally:
        (tiny / "params.yaml").write_text(original)
    assert_one_line_error(result, *fragments)


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
            import shutil
            shutil.rmtree(raw)
        moved.rename(raw)


def test_sample_data_hash_equals_data_dvc_on_a_fresh_clone(tmp_path):
    root = copy_project(tmp_path, preset=None, sample_data=True)
    status = json.loads(run(["dvc", "status", "--json", "data.dvc"], root).stdout or "{}")
    assert status == {}
    assert len(list((root / "data" / "raw").rglob("*.png"))) == 5000
    refused = run(["compresslab", "sample-data", "--out", "conf"], root, check=False)
    assert_one_line_error(refused, "already holds other data")
