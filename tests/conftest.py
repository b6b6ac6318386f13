"""Shared fixtures: tiny image data sets, and copies of the project where the real `dvc` runs.

End-to-end tests copy the project (what git tracks, plus new untracked files) into a temporary folder, make it
a fresh git repository with a tiny data set of its own, select the `smoke` preset as the default, and run the
real `dvc` commands there. MLflow writes to that copy's own mlflow.db. The pipeline runs once per test session (once
for all pytest-xdist workers); each module then works on its own copy of the result (`project`).
"""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab.tools import sandbox

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_image_folder(root: Path, classes=("fire", "no_fire", "smoke"), per_class=24, size=32,
                      seed=0) -> Path:
    """Write a small, learnable image data set: each class has its own brightness and stripe pattern, plus noise.

    Files alternate PNG / JPEG / BMP and colour / grayscale, as a user's folder might.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = [np.sin(xx / 2.0 * (k + 1)) * np.cos(yy / 3.0 * (k % 2 + 1)) for k in range(len(classes))]
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = 50 + 150 * k / max(len(classes) - 1, 1) + 30 * patterns[k] + rng.normal(0, 15, (size, size))
            pixels = np.clip(pixels, 0, 255).astype(np.uint8)
            suffix = (".png", ".jpg", ".bmp")[i % 3]
            image = Image.fromarray(pixels, mode="L")
            if i % 2:
                image = image.convert("RGB")
            image.save(folder / f"{name}_{i:03d}{suffix}")
    return root


def firenet_like(channels: int = 1):
    """Conv2D / AveragePooling2D / Dropout / Flatten / Dense, as in the FireNet study, at toy size."""
    import tf_keras as keras

    layers = keras.layers
    inputs = keras.Input((8, 8, channels))
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = layers.AveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.1, name="drop")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(16, activation="relu", name="fc")(x)
    return keras.Model(inputs, layers.Dense(3, activation="softmax", name="out")(x))


def run(cmd: list[str] | str, cwd: Path, check: bool = True, env: dict | None = None,
        timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command with the project's virtual environment first on PATH; fail with its output."""
    result = subprocess.run(cmd, cwd=cwd, env=command_env(env), capture_output=True, text=True, timeout=timeout,
                            shell=isinstance(cmd, str))
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-6000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def command_env(env: dict | None = None) -> dict:
    """This environment without MLflow and DVC settings, the virtual environment first on PATH, plus `env`."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("MLFLOW_", "DVC_")) and k != "TF_USE_LEGACY_KERAS"}
    full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"
    return {**full_env, **(env or {})}


@contextlib.contextmanager
def started_server(cmd: list[str], health_url: str, cwd: Path, *, env: dict | None = None,
                   log: Path | None = None, seconds: int = 120):
    """Run a server (`mlflow server`, `mlflow models serve`) until the block ends, once `health_url` answers;
    a server that exits first fails with its log's end."""
    stderr = log.open("w") if log is not None else subprocess.DEVNULL
    server = subprocess.Popen(cmd, cwd=cwd, env=command_env(env), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        for _ in range(seconds):
            try:
                urllib.request.urlopen(health_url, timeout=2)
                break
            except OSError:
                assert server.poll() is None, (log.read_text()[-3000:] if log is not None else f"{cmd[:3]} exited")
                time.sleep(1)
        else:
            raise AssertionError(f"{' '.join(cmd[:3])} did not answer {health_url} within {seconds} s")
        yield server
    finally:
        server.terminate()
        server.wait(timeout=30)
        if log is not None:
            stderr.close()


def stages_ran(output: str) -> list[str]:
    """Stage names in DVC's "Running stage 'X'" lines, in order."""
    return re.findall(r"Running stage '([^']+)'", output)


def per_variant(*names: str) -> set[str]:
    """The convert, evaluate and device stages of these variants (device: nothing to time by default, but its
    inputs, the variant's files, changed)."""
    return {f"{kind}@{name}" for kind in ("convert", "evaluate", "device") for name in names}


def copy_project(dest: Path, preset: str | None = "smoke", sample_data: bool = False) -> Path:
    """Copy the project into dest as a fresh git repository with data, committed.

    Args:
      preset: the conf/experiment option made the default (None keeps the project's default config).
      sample_data: write the bundled sample with `compresslab sample-data` and keep the project's data.dvc,
        instead of a tiny generated data set tracked anew.
    """
    sandbox.copy_project(REPO, dest)
    if preset:
        config = dest / "conf" / "config.yaml"
        config.write_text(config.read_text().replace("  - experiment: null", f"  - experiment: {preset}"))
    sandbox.init_git(dest)
    if sample_data:
        run(["compresslab", "sample-data"], dest)
    else:
        make_image_folder(dest / "data" / "raw")
        run(["dvc", "add", "-q", "data/raw"], dest)
        run(["compresslab", "params"], dest)
    sandbox.commit_all(dest, "tiny project")
    return dest


def mlflow_runs(root: Path, **tags) -> list:
    """Runs of the project's `compresslab` MLflow experiment whose tags equal the given values."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("compresslab")
    query = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
    return client.search_runs([experiment.experiment_id], query, max_results=500)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "raw")


@pytest.fixture(scope="session")
def pipeline_results(tmp_path_factory, worker_id) -> Path:
    """The tiny project run through `dvc repro` once and committed; modules get copies (`project`).

    Under pytest-xdist the first worker to need it runs the pipeline and the others wait for it (a file lock in
    the session's shared temporary folder) instead of each running it again.
    """
    if worker_id == "master":   # no xdist: this process alone
        return run_pipeline_once(tmp_path_factory.mktemp("project"))
    shared = tmp_path_factory.getbasetemp().parent  # this session's folder, shared by its workers
    with FileLock(str(shared / "pipeline-results.lock")):
        root = shared / "pipeline-results"
        if not (root / ".git" / "first_repro.log").is_file():
            shutil.rmtree(root, ignore_errors=True)  # a worker that failed midway left a partial copy
            root.mkdir()
            run_pipeline_once(root)
    return root


def run_pipeline_once(root: Path) -> Path:
    copy_project(root)
    result = run(["dvc", "repro"], root)
    sandbox.commit_all(root, "pipeline results")  # queued experiments start from these
    (root / ".git" / "first_repro.log").write_text(result.stdout + result.stderr)  # written last: complete
    return root


@pytest.fixture(scope="module")
def project(pipeline_results, tmp_path_factory) -> Path:
    """A copy of the tiny project as its first `dvc repro` left it, for the end-to-end tests of one module.

    Each module gets its own copy (workspace, git, DVC cache and run cache, MLflow store, no queue), so no
    module sees another's experiments, cached runs, queue workers or MLflow runs, whatever order or process
    (pytest-xdist) the modules run in. The tests of a module share it and change only what they check.
    """
    root = tmp_path_factory.mktemp("module-project") / "project"
    shutil.copytree(pipeline_results, root, symlinks=True)
    return root


def restore_committed(root: Path) -> None:
    """Put the workspace back to the committed pipeline results (an exp run applies its own to it)."""
    run(["git", "reset", "-q", "--hard"], root)
    run(["dvc", "checkout", "--force", "--quiet"], root)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with started_server([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                        f"{base}/health", tmp_path, log=tmp_path / "server.log"):
        yield base


def estimated_minutes(item) -> float:
    """What `@pytest.mark.slow(minutes=N)` says a test takes on 2 busy cores (0 for the fast ones: a module's
    `pytestmark = pytest.mark.slow` gives no estimate)."""
    mark = item.get_closest_marker("slow")
    return float(mark.kwargs.get("minutes", 0)) if mark else 0.0


def pytest_collection_modifyitems(items):
    """Order the modules for pytest-xdist's workers (`make test` keeps this order: `--no-loadscope-reorder`).

    The module that needs the tiny project's pipeline and takes longest comes first: its worker builds the
    pipeline at once, while the other worker runs the modules that never need it instead of waiting on the
    lock. Then the other modules, each group longest first, so that no long module starts last and leaves
    one worker idle at the end. Within a module, its slow tests run first.
    """
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    minutes = {name: sum(map(estimated_minutes, group)) for name, group in modules.items()}
    needs_pipeline = {name for name, group in modules.items()
                      if any("pipeline_results" in item.fixturenames for item in group)}
    # sorted: a tie must go the same way in every xdist worker (a set iterates in a per-process hash order)
    builder = max(sorted(needs_pipeline), key=minutes.get, default=None)

    def rank(name: str) -> tuple:
        group = 0 if name == builder else 2 if name in needs_pipeline else 1
        return group, -minutes[name], -len(modules[name])

    items[:] = [item for name in sorted(modules, key=rank)
                for item in sorted(modules[name], key=lambda item: item.get_closest_marker("slow") is None)]
