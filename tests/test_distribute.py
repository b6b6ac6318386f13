"""train.strategy: the baseline and the TFMOT fine-tuning stages under tf.distribute, run as the real stage
scripts: `mirrored` on this machine, and `multi_worker` as two CPU worker processes on 127.0.0.1 that read the
standard TF_CONFIG. Only the chief writes the model, the reports and the MLflow run, which records the
strategy and the devices."""

import json
import os
import subprocess

import numpy as np
import pytest
from omegaconf import OmegaConf

from compresslab import paths
from compresslab.data import prepare
from conftest import BIN, REPO, free_port, mlflow_runs

pytestmark = pytest.mark.slow

TRAIN_IMAGES = 96


@pytest.fixture
def workspace(tmp_path):
    """Prepared two-class 24x24 RGB images (bright or dark: learnable in an epoch) and params for FireNet."""
    rng = np.random.default_rng(0)

    def split(n):
        labels = np.arange(n) % 2
        return [((rng.random((n, 24, 24, 3)) * 80 + 120 * labels[:, None, None, None]).astype(np.uint8), labels)]

    prepare.write_prepared(tmp_path / paths.PREPARED, {"train": split(TRAIN_IMAGES), "val": split(32),
                                                    "test": split(32)}, ["dark", "bright"],
                        image_size=24, channels=3, images_per_shard=40)
    params = OmegaConf.load(REPO / "params.yaml")
    params.data.image_size = 24
    params.model = OmegaConf.load(REPO / "conf" / "model" / "firenet.yaml")
    params.train.update(epochs=2, batch_size=16, patience=0)
    for group in ("prune", "quantize", "cluster"):
        params[group].epochs = 1
    OmegaConf.save(params, tmp_path / "params.yaml")
    return tmp_path


def start_stage(name: str, root, strategy: str, tf_config: dict | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "TF_CONFIG"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_ROOT=str(root))
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    params = OmegaConf.load(root / "params.yaml")
    params.train.strategy = strategy
    OmegaConf.save(params, root / "params.yaml")
    return subprocess.Popen(["python", str(REPO / "stages" / f"{name}.py")], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-6000:]
    return output


@pytest.mark.slow(minutes=0.7)
def test_two_workers_on_127_0_0_1_train_and_prune_together_and_only_the_chief_writes(workspace):
    for stage in ("train", "prune"):
        ports = [free_port()]
        while len(ports) < 2:  # two distinct ports: the OS may hand a just-released one out again
            ports += [port for port in [free_port()] if port not in ports]
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        workers = [start_stage(stage, workspace, "multi_worker", {"cluster": cluster,
                                                                   "task": {"type": "worker", "index": index}})
                   for index in (0, 1)]
        chief, other = (finish(process) for process in workers)
        assert "2 replica(s) (multi_worker strategy)" in chief if stage == "train" else True
        assert f"saved {paths.keras_model('baseline' if stage == 'train' else 'pruned')}" in chief
        assert "worker worker:1 finished" in other and "saved models/" not in other
        # Global batch 16 over 96 images: 6 steps an epoch, shared by the two workers (not 6 each).
        assert f"{TRAIN_IMAGES // 16}/{TRAIN_IMAGES // 16}" in chief and f"{TRAIN_IMAGES // 16}/" in other
    assert sorted(path.name for path in (workspace / "models").iterdir()) == ["baseline.keras", "pruned.keras"]
    sparsity = json.loads((workspace / "reports" / "prune" / "metrics.json").read_text())["sparsity"]
    assert sparsity == pytest.approx(0.5, abs=0.02)  # TFMOT's masks, applied in step on both workers
    runs = mlflow_runs(workspace)
    # The chief's two stage runs, each under its execution's parent run; the worker logged nothing.
    assert sorted(run.data.tags["stage"] for run in runs) == ["pipeline", "pipeline", "prune", "train"]
    for run in (run for run in runs if run.data.tags["stage"] != "pipeline"):
        tags = run.data.tags
        assert (tags["distribute.strategy"], tags["distribute.replicas"], tags["distribute.workers"],
                tags["distribute.task"]) == ("multi_worker", "2", "2", "worker:0")
        assert "CPU:0" in tags["distribute.devices"]


@pytest.mark.slow(minutes=1)
def test_mirrored_runs_the_baseline_and_each_tfmot_wrapper_in_its_scope(workspace):
    for stage in ("train", "prune", "quantize", "cluster"):
        output = finish(start_stage(stage, workspace, "mirrored"))
        assert f"{stage}: test accuracy" in output
    runs = [run for run in mlflow_runs(workspace) if run.data.tags["stage"] != "pipeline"]
    assert sorted(run.data.tags["stage"] for run in runs) == ["cluster", "prune", "quantize", "train"]
    for run in runs:
        assert run.data.tags["distribute.strategy"] == "mirrored" and run.data.params["train.strategy"] == "mirrored"
        assert int(run.data.tags["distribute.replicas"]) >= 1 and "device:" in run.data.tags["distribute.devices"]
    clustered = json.loads((workspace / "reports" / "cluster" / "metrics.json").read_text())
    assert clustered["max_unique_values"] <= OmegaConf.load(workspace / "params.yaml").cluster.number_of_clusters
