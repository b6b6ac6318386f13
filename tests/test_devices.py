"""The device stage against a real SSH server on 127.0.0.1 (compresslab.devices.loopback: asyncssh, with keys the
tests generate): every file of the tiny pipeline timed through it by `dvc exp run -S evaluate.devices=[...]`, the
figures in the report and the MLflow summary; and each failure (wrong port, refused key, no Python, no LiteRT, a
device that takes too long, a server killed mid-run) one line naming the device and the fix, with nothing left
half-written."""

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from compresslab import variants
from compresslab.devices import remote
from compresslab.devices.loopback import override
from compresslab.errors import UserError
from compresslab.settings import DeviceConfig
from conftest import command_env, free_port, mlflow_runs, read_json, restore_committed, run, stages_ran

pytestmark = pytest.mark.slow   # every test here needs the tiny pipeline's files


@contextlib.contextmanager
def loopback_device(folder: Path):
    """A loopback SSH device until the block ends: (its process, its port)."""
    (folder / "port").unlink(missing_ok=True)   # a server started in this folder before left its port
    server = subprocess.Popen([sys.executable, "-m", "compresslab.devices.loopback", str(folder)],
                              env=command_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):
            if (folder / "port").is_file():
                break
            assert server.poll() is None, server.stderr.read()[-2000:]
            time.sleep(0.1)
        yield server, int((folder / "port").read_text())
    finally:
        server.kill()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loopback")
    with loopback_device(folder) as (_, port):
        yield folder, port


def device(folder: Path, listening: int, **changes) -> DeviceConfig:
    """The loopback device at port `listening`, with `changes` (a wrong port, key, ...)."""
    return DeviceConfig(**{"name": "loopback", "host": "127.0.0.1", "port": listening,
                           "identity_file": str(folder / "client_key"), "known_hosts": str(folder / "known_hosts"),
                           "python": sys.executable, **changes})


def plan(files: list[Path], **changes) -> dict:
    return {"files": [path.name for path in files], "reference": files[0].name, "threads": [1], "warmup": 1,
            "min_runs": 3, "min_seconds": 0.0, "max_runs": 10, "ratio_rounds": 2, "measure_memory": False,
            "sample": None, **changes}


def baseline_files(project: Path) -> list[Path]:
    return [project / "models" / "tflite" / "baseline" / f"baseline-{mode}.tflite" for mode in ("float32", "int8")]


def leftover_folders() -> set[Path]:
    """The device folders in the loopback device's temporary directory (this machine's)."""
    return set(Path(tempfile.gettempdir()).glob("compresslab-timing.*"))


@pytest.mark.slow(minutes=2)
def test_every_file_is_timed_on_the_device_and_lands_in_the_report_and_mlflow(project, loopback):
    """A board that cannot be reached fails the device stage in one line and writes nothing; the same run with
    the right port times every file, re-times nothing on this machine, and reports the device beside it."""
    folder, port = loopback
    restore_committed(project)
    wrong = override(folder, free_port()).removeprefix("dvc exp run -S ").strip("'")
    failed = run(["dvc", "exp", "run", "-S", wrong], project, check=False)
    assert failed.returncode != 0
    said = [line for line in (failed.stdout + failed.stderr).splitlines() if line.startswith("error: device ")]
    assert len(said) == 1 and "(127.0.0.1:" in said[0] and "cannot be reached" in said[0]
    # The failed stage wrote no record, whole or half: DVC removed its old one before running it.
    written = [read_json(path) for path in (project / "reports" / "devices").glob("*.json")]
    assert all(not record["devices"] for record in written) and len(written) < len(variants.VARIANTS)

    right = override(folder, port).removeprefix("dvc exp run -S ").strip("'")
    result = run(["dvc", "exp", "run", "-S", right], project, timeout=900)
    ran = stages_ran(result.stdout)
    assert {f"device@{variant}" for variant in variants.VARIANTS} <= set(ran) and "report" in ran
    assert not any(stage.startswith(("evaluate@", "convert@")) for stage in ran)   # this machine is not re-timed
    for variant in variants.VARIANTS:
        record = read_json(project / "models" / "tflite" / variant / "conversion.json")
        timed = read_json(project / "reports" / "devices" / f"{variant}.json")["devices"]["loopback"]
        assert [row["mode"] for row in timed["rows"]] == [m for m in record["modes"] if m not in record["failures"]]
        assert timed["fingerprint"]["ai-edge-litert"] == "2.3.0" and timed["fingerprint"]["cores"]
        for row in timed["rows"]:
            assert row["latency_median_ms_t1"] > 0 and row["fps_t1"] == pytest.approx(1000 / row["latency_median_ms_t1"])
            assert row["latency_p25_ms_t1"] <= row["latency_median_ms_t1"] <= row["latency_p75_ms_t1"]
            if row["file"] == variants.BASELINE_FILE:
                assert row["latency_ratio_t1"] == 1.0
            else:
                assert 0 < row["latency_ratio_p25_t1"] <= row["latency_ratio_t1"] <= row["latency_ratio_p75_t1"]
    report = (project / "reports" / "report.md").read_text()
    assert "## Latency on devices" in report and "### loopback (127.0.0.1)" in report
    assert "| pcqat-int8 " in report.split("## Latency on devices")[1]
    assert (project / "reports" / "plots" / "devices.png").stat().st_size > 10_000
    summary = max(mlflow_runs(project, summary="true"), key=lambda r: r.info.start_time)
    for variant in variants.VARIANTS:
        for row in read_json(project / "reports" / "devices" / f"{variant}.json")["devices"]["loopback"]["rows"]:
            key = f"{variant}.{row['mode']}.loopback"
            assert summary.data.metrics[f"{key}.median_ms_t1"] == pytest.approx(row["latency_median_ms_t1"])
            assert summary.data.metrics[f"{key}.ratio_t1"] == pytest.approx(row["latency_ratio_t1"])
    assert summary.data.tags["device.loopback.ai-edge-litert"] == "2.3.0"
    assert not leftover_folders()

    # compare ranks by the board's ratios; the runs that timed nothing on it (the committed one) are left out.
    chosen = run(["compresslab", "compare", "--device", "loopback", "--max-drop", "100", "--objective", "latency"],
                 project)
    assert "latency is as timed on device loopback; left out, timed nothing there: workspace" in chosen.stdout
    selection = read_json(project / "reports" / "compare" / "selection.json")["chosen"]
    timed = read_json(project / "reports" / "devices" / f"{selection['variant']}.json")["devices"]["loopback"]
    on_board = next(row for row in timed["rows"] if row["mode"] == selection["mode"])
    assert selection["latency_ratio"] == pytest.approx(on_board["latency_ratio_t1"])
    refused = run(["compresslab", "compare", "--device", "nowhere"], project, check=False)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: no summary run timed its files on device 'nowhere' (runs timed on: loopback): run `dvc exp run -S "
        "'evaluate.devices=[{name: nowhere, host: ...}]'` first"]


@pytest.mark.parametrize("change, message", [
    (lambda folder, port: {"port": free_port()}, "cannot be reached"),
    (lambda folder, port: {"identity_file": str(folder / "host_key")}, "refused the key: add your public key"),
    (lambda folder, port: {"python": "/nonexistent/python3"}, "has no Python at '/nonexistent/python3'"),
    # -S: a Python without site-packages, as on a board where LiteRT was never installed
    (lambda folder, port: {"python": f"{sys.executable} -S"}, "numpy is not installed for"),
    (lambda folder, port: {"known_hosts": str(folder / "authorized_keys")}, "has a host key that is not known"),
    (lambda folder, port: {"timeout_s": 0.5}, "did not finish"),
], ids=["wrong-port", "wrong-key", "no-python", "no-litert", "unknown-host-key", "timeout"])
def test_each_failure_is_one_line_naming_the_device_and_the_fix(project, loopback, change, message):
    folder, port = loopback
    files = baseline_files(project)
    slow = {"min_seconds": 30.0, "max_runs": 10**6} if message == "did not finish" else {}
    with pytest.raises(UserError) as error:
        remote.time_files(device(folder, port, **change(folder, port)), files, plan(files, **slow), echo=lambda _: None)
    text = str(error.value)
    assert text.startswith("device loopback (127.0.0.1:") and message in text and "\n" not in text
    assert ": " in text.split(")", 1)[1]   # the fix follows the problem
    assert not leftover_folders()   # the device's folder is removed on every failure it can still be told of


def test_a_server_killed_mid_run_is_one_line_and_the_next_run_completes(project, tmp_path):
    files = baseline_files(project)
    before = leftover_folders()
    with loopback_device(tmp_path / "device") as (server, port):
        failure = []

        def timing():
            try:
                remote.time_files(device(tmp_path / "device", port), files,
                                  plan(files, min_seconds=60.0, max_runs=10**7), echo=lambda _: None)
            except UserError as err:
                failure.append(str(err))

        worker = threading.Thread(target=timing)
        worker.start()
        deadline = time.monotonic() + 60
        while not [p for p in psutil.Process(server.pid).children(recursive=True)
                   if "timing_core.py" in p.cmdline()]:
            assert time.monotonic() < deadline, "the timing never started on the device"
            time.sleep(0.1)
        orphans = [p for p in psutil.Process(server.pid).children(recursive=True)]
        server.send_signal(signal.SIGKILL)
        worker.join(timeout=60)
        for process in orphans:   # the device's own processes outlive its SSH server; end them here
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    for left in leftover_folders() - before:   # and so does its folder: nobody is left to remove it
        shutil.rmtree(left)
    assert len(failure) == 1 and failure[0].startswith("device loopback (127.0.0.1:")
    assert "closed the connection while timing" in failure[0] and "run the stage again" in failure[0]
    with loopback_device(tmp_path / "device") as (_, port):
        measured = remote.time_files(device(tmp_path / "device", port), files, plan(files), echo=lambda _: None)
    assert set(measured["files"]) == {path.name for path in files}
    assert json.dumps(measured)   # what the stage writes


def test_a_device_is_refused_in_one_line_before_any_connection():
    from compresslab import settings

    base = {"name": "default", "threads": [1], "warmup_runs": 1, "min_runs": 1, "min_seconds": 0}
    refused = [([{"name": "Pi 5", "host": "pi"}], "must be a short lower-case name"),
               ([{"name": "pi", "host": "pi", "port": 70000}], "must be a TCP port"),
               ([{"name": "pi", "host": "a"}, {"name": "pi", "host": "b"}], "names a device twice"),
               ([{"name": "pi"}], "evaluate.devices.0.host is not set"),
               ([{"name": "pi", "host": "pi", "user": "me"}], "has unknown key(s) ['user']")]
    for devices, message in refused:
        with pytest.raises(UserError, match=None) as error:
            settings.parse("evaluate", {**base, "devices": devices})
        assert message in str(error.value), str(error.value)
    with pytest.raises(UserError, match="identity_file /nowhere/key not found"):
        remote.time_files(DeviceConfig(name="pi", host="pi", identity_file="/nowhere/key"), [], {})
