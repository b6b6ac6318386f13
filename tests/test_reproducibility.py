"""Reproducibility and faults, end to end: the same inputs give the same numbers, and a stage killed midway
leaves nothing that a later run takes as good."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from compresslab.models.saving import load_model
from conftest import BIN, copy_project, mlflow_runs, read_json, restore_committed, run

pytestmark = pytest.mark.slow


def without_latency(metrics: dict) -> dict:
    """The headline metrics minus the measured timings (which vary between runs by nature)."""
    return {variant: {mode: {k: v for k, v in figures.items() if not k.startswith("latency")}
                      for mode, figures in modes.items()}
            for variant, modes in metrics.items() if isinstance(modes, dict)}


@pytest.mark.slow(minutes=3.5)
def test_a_fresh_clone_reproduces_every_result_and_logs_their_summary(project, tmp_path):
    """What `make run` does on a fresh clone: no model in git, an empty DVC cache, so every stage runs again;
    every quality and size figure and every stage metric must come out the same, and MLflow must hold the
    summary of the results now in reports/ (README, "Tracking with MLflow")."""
    restore_committed(project)
    first = read_json(project / "reports/metrics.json")
    stage_metrics = {path.relative_to(project): read_json(path)
                     for path in sorted((project / "reports").glob("*/metrics.json"))}
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    shutil.copytree(project / "data" / "raw", clone / "data" / "raw")  # `make run` writes the sample data here
    run(["dvc", "repro"], clone)
    again = read_json(clone / "reports/metrics.json")
    assert without_latency(again) == without_latency(first)
    for path, before in stage_metrics.items():
        assert read_json(clone / path) == before, path
    (summary,) = mlflow_runs(clone, summary="true")
    assert summary.data.metrics["pruned.int8.accuracy"] == pytest.approx(again["pruned"]["int8"]["accuracy"],
                                                                         rel=1e-3)


class Repro:
    """`dvc repro` in its own process group, its output read continuously by a thread.

    The output must be drained to the end: a stage that keeps printing into a pipe nobody reads blocks once
    the pipe is full, and would look like a stage that ignores Ctrl-C.
    """

    def __init__(self, root, *targets, sigint_ignored=False):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
        env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", PYTHONUNBUFFERED="1")
        # A background job of a shell without job control (a CI runner) starts with SIGINT ignored.
        disposition = signal.SIG_IGN if sigint_ignored else signal.SIG_DFL
        self.process = subprocess.Popen(["dvc", "repro", *targets], cwd=root, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, disposition))
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def wait_for_line(self, fragment, timeout=300) -> None:
        deadline = time.time() + timeout
        while not any(fragment in line for line in list(self.lines)):
            if time.time() > deadline or self.process.poll() is not None:
                raise AssertionError(f"never saw {fragment!r}:\n{''.join(self.lines)[-3000:]}")
            time.sleep(0.05)

    def wait_for_stage_start_up(self, script, timeout=300) -> None:
        """Until the stage's own Python process exists and handles SIGINT (it has just started and is importing
        TensorFlow). Before that point a signal can find SIGINT still ignored, as inherited from dvc (which
        ignores it while a stage runs), and the kernel discards it: no program can stop there."""
        deadline = time.time() + timeout
        while time.time() < deadline and self.process.poll() is None:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error, OSError):
                    # `script` as an argument of its own: the shell dvc starts the stage with
                    # (`bash -c "python stages/train.py"`) also handles SIGINT, until it execs Python, and a
                    # signal it takes there is lost with it.
                    if script in child.cmdline() and handles_sigint(child.pid):
                        return
            time.sleep(0.01)
        raise AssertionError(f"{script} never started:\n{''.join(self.lines)[-3000:]}")

    def stop(self, how, timeout=60) -> float:
        """Send `how` to the whole group (dvc and the stage it runs, as Ctrl-C or the OOM killer do);
        returns the seconds until dvc exited."""
        sent = time.time()
        os.killpg(self.process.pid, how)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise AssertionError(f"dvc repro still running {timeout} s after {how!r}:\n"
                                 f"{''.join(self.lines)[-3000:]}")
        return time.time() - sent


def handles_sigint(pid: int) -> bool:
    """Whether the process has a SIGINT handler installed (bit SIGINT - 1 of SigCgt in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


# A Ctrl-C at a terminal reaches every point of a stage, start-up included. Under a shell that ignores SIGINT,
# the stage takes SIGINT back as soon as `compresslab` is imported (its first line); a signal that arrives
# before that, while it is still ignored, is discarded by the kernel, so that case is tested once training runs.
# "start-up": as soon as the stage's Python process handles SIGINT, while it imports TensorFlow.
@pytest.mark.slow(minutes=0.7)
@pytest.mark.parametrize("how, when, sigint_ignored", [
    (signal.SIGINT, "Epoch 3/", False),
    (signal.SIGINT, "Epoch 3/", True),
    (signal.SIGINT, "start-up", False),
    (signal.SIGKILL, "Epoch 3/", False),
], ids=["ctrl-c", "ctrl-c-in-background-shell", "ctrl-c-at-start-up", "killed"])
def test_a_stage_killed_midway_is_rerun_and_completes(tmp_path, how, when, sigint_ignored):
    root = copy_project(tmp_path)
    run(["compresslab", "params", "-S", "train.epochs=3000", "-S", "train.patience=0"], root)
    repro = Repro(root, "train", sigint_ignored=sigint_ignored)
    if when == "start-up":
        repro.wait_for_stage_start_up("stages/train.py")
    else:
        repro.wait_for_line(when)
    took = repro.stop(how)
    assert repro.process.returncode != 0
    assert took < 30, f"dvc repro took {took:.0f} s to stop"  # a user at the keyboard waits seconds
    assert not (root / "models" / "baseline.keras").exists()
    assert not list((root / "models").glob("*.partial"))
    run(["compresslab", "params"], root)  # back to the smoke epochs
    status = json.loads(run(["dvc", "status", "--json", "train"], root).stdout or "{}")
    assert "train" in status  # DVC knows train did not finish
    result = run(["dvc", "repro", "train"], root)
    assert "Running stage 'train'" in result.stdout
    assert load_model(root / "models" / "baseline.keras").count_params() > 0
    assert json.loads(run(["dvc", "status", "--json", "train"], root).stdout or "{}") == {}
