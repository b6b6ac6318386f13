"""Reproducibility and faults, end to end: the same inputs give the same numbers, and a stage killed midway
leaves nothing that a later run takes as good."""

import json
import os
import signal
import subprocess
import time

import pytest

from compresslab.model_io import load_model
from conftest import BIN, copy_project, read_json, restore_committed, run

pytestmark = pytest.mark.slow


def without_latency(metrics: dict) -> dict:
    """The headline metrics minus the measured timings (which vary between runs by nature)."""
    return {variant: {mode: {k: v for k, v in figures.items() if not k.startswith("latency")}
                      for mode, figures in modes.items()}
            for variant, modes in metrics.items() if isinstance(modes, dict)}


def test_forced_repro_gives_identical_quality_and_size(project):
    restore_committed(project)
    first = read_json(project / "reports/metrics.json")
    stage_metrics = {path: read_json(path) for path in sorted((project / "reports").glob("*/metrics.json"))}
    try:
        run(["dvc", "repro", "-f"], project)
        assert without_latency(read_json(project / "reports/metrics.json")) == without_latency(first)
        for path, before in stage_metrics.items():
            assert read_json(path) == before, path
    finally:
        restore_committed(project)


def start_repro(root, *targets):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", PYTHONUNBUFFERED="1")
    return subprocess.Popen(["dvc", "repro", *targets], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_line(process, fragment, timeout=300) -> str:
    seen, deadline = [], time.time() + timeout
    for line in process.stdout:
        seen.append(line)
        if fragment in line:
            return "".join(seen)
        if time.time() > deadline:
            break
    raise AssertionError(f"never saw {fragment!r}:\n{''.join(seen)[-3000:]}")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_a_stage_killed_midway_is_rerun_and_completes(tmp_path, how):
    root = copy_project(tmp_path)
    run(["compresslab", "params", "-S", "train.epochs=3000", "-S", "train.patience=0"], root)
    process = start_repro(root, "train")
    wait_for_line(process, "Epoch 3/")
    os.killpg(process.pid, how)  # the whole group: dvc and the stage it runs, as Ctrl-C or the OOM killer
    process.wait(timeout=120)
    assert process.returncode != 0
    assert not (root / "models" / "baseline.keras").exists()
    assert not list((root / "models").glob("*.partial"))
    run(["compresslab", "params"], root)  # back to the smoke epochs
    status = json.loads(run(["dvc", "status", "--json", "train"], root).stdout or "{}")
    assert "train" in status  # DVC knows train did not finish
    result = run(["dvc", "repro", "train"], root)
    assert "Running stage 'train'" in result.stdout
    assert load_model(root / "models" / "baseline.keras").count_params() > 0
    assert json.loads(run(["dvc", "status", "--json", "train"], root).stdout or "{}") == {}
