"""Working as a team, end to end (README, "Share the cache and the runs with a team"): a DVC remote that a
second clone pulls every output from instead of re-running the pipeline, experiments shared through a git
remote with `dvc exp push` / `dvc exp pull`, a remote that cannot be reached, and two clones whose queued
sweeps run at the same time against one real `mlflow server` (SQLite backend, --artifacts-destination).

The DVC remote and the git server are local folders here; with an S3, GCS or SSH remote the commands are the same.
"""

import hashlib
import urllib.parse
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port, read_json, restore_committed, run, stages_ran
from test_sweeps import experiments, wait_for_queue

pytestmark = pytest.mark.slow

# What DVC caches (and so what a remote carries): the data, the prepared arrays, the models and TFLite files,
# the evaluations. Metrics, plots and the report are small and committed to git.
CACHED = ("data/raw", "data/prepared", "models", "reports/evaluate")
# Files the report stage logs into every summary run (stages/report.py), besides the plots/ and tflite/ folders.
SUMMARY_FILES = {"report.md", "variants.csv", "metrics.json", "fingerprint.json", "profile.json", "allocation.json",
                 "tensor_error.json", "dvc.lock", "params.yaml"}


def md5s(root: Path, folders=CACHED) -> dict[str, str]:
    """md5 of every file under the given folders, by path relative to root."""
    return {str(path.relative_to(root)): hashlib.md5(path.read_bytes()).hexdigest()
            for folder in folders for path in sorted((root / folder).rglob("*")) if path.is_file()}


def clone(source, dest: Path, remote: Path) -> Path:
    """`git clone` a sandbox and point the clone at the DVC remote (in .dvc/config.local: a per-clone setting)."""
    run(["git", "clone", "-q", str(source), str(dest)], dest.parent)
    for args in (["config", "user.email", "teammate@compresslab.invalid"], ["config", "user.name", "teammate"]):
        run(["git", *args], dest)
    run(["dvc", "remote", "add", "--local", "-d", "storage", str(remote)], dest)
    return dest


@pytest.fixture(scope="module")
def storage(project, tmp_path_factory):
    """A local-folder DVC remote that the shared project pushed its committed results to: the team's storage."""
    remote = tmp_path_factory.mktemp("dvc-remote")
    restore_committed(project)
    run(["dvc", "remote", "add", "--local", "-d", "storage", str(remote)], project)
    try:
        pushed = run(["dvc", "push"], project)
        project.joinpath(".git", "first_push.log").write_text(pushed.stdout + pushed.stderr)
        yield remote
    finally:
        run(["dvc", "remote", "remove", "--local", "storage"], project, check=False)


def test_a_second_clone_pulls_every_output_from_the_remote_and_reruns_nothing(project, storage, tmp_path):
    """`dvc push`, then in a fresh clone `dvc pull`: the outputs are the first clone's byte for byte, and
    `dvc repro` finds every stage up to date, so it trains, converts and evaluates nothing (and logs nothing)."""
    assert "files pushed" in (project / ".git" / "first_push.log").read_text()
    assert any(storage.joinpath("files", "md5").iterdir())
    first = md5s(project)
    assert any(name.endswith(".tflite") for name in first) and "models/pruned.keras" in first

    second = clone(project, tmp_path / "second", storage)
    # git carries no model: only its ignore list and the artifact declarations (models/dvc.yaml)
    assert md5s(second, ["models"]).keys() <= {"models/.gitignore", "models/dvc.yaml"}
    run(["dvc", "pull"], second)
    assert md5s(second) == first
    assert "Data and pipelines are up to date" in run(["dvc", "status", "dvc.yaml"], second).stdout
    assert "Cache and remote 'storage' are in sync" in run(["dvc", "status", "--cloud", "dvc.yaml"], second).stdout
    result = run(["dvc", "repro"], second)
    assert stages_ran(result.stdout) == [] and "Data and pipelines are up to date" in result.stdout
    assert md5s(second) == first
    assert read_json(second / "reports/metrics.json") == read_json(project / "reports/metrics.json")
    assert not (second / "mlflow.db").exists()  # no stage ran, so no run was logged
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], second).stdout == ""


@pytest.mark.slow(minutes=1)
def test_an_experiment_travels_through_a_git_remote_with_exp_push_and_exp_pull(project, storage, tmp_path):
    """An experiment run in one clone reaches another through `origin` (a bare repository): its git ref by
    `dvc exp push origin`, its cached outputs through the DVC remote; `dvc exp pull origin` brings both."""
    restore_committed(project)
    origin = tmp_path / "team.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], project)
    try:
        run(["git", "push", "-q", "origin", "HEAD:main"], project)
        second = clone(origin, tmp_path / "second", storage)
        run(["dvc", "exp", "run", "-n", "shared-exp", "-S", "evaluate.warmup_runs=3"], project)  # evaluate, report
        made = experiments(project)["shared-exp"]
        run(["dvc", "exp", "push", "origin", "shared-exp"], project)
        assert "shared-exp" in run(["dvc", "exp", "list", "origin"], second).stdout
        assert "shared-exp" not in experiments(second)
        run(["dvc", "exp", "pull", "origin", "shared-exp"], second)
    finally:
        run(["git", "remote", "remove", "origin"], project, check=False)
        restore_committed(project)
    pulled = experiments(second)["shared-exp"]
    assert pulled["params"]["params.yaml"]["data"]["evaluate"]["warmup_runs"] == 3
    assert pulled["metrics"] == made["metrics"]
    assert pulled["metrics"]["reports/metrics.json"]["data"]["pruned"]["int8"]["accuracy"] > 0
    # `exp pull` fetched the experiment's cached outputs too: applied, it is complete and up to date.
    run(["dvc", "exp", "apply", "shared-exp"], second)
    assert "Data and pipelines are up to date" in run(["dvc", "status", "dvc.yaml"], second).stdout
    assert md5s(second, ["reports/evaluate"]) != md5s(project, ["reports/evaluate"])  # its own evaluations


def test_an_unreachable_remote_fails_with_a_non_zero_exit_and_says_so(project, tmp_path):
    """Bad input: a remote folder that does not exist, a server that does not answer, a plugin not installed."""
    second = clone(project, tmp_path / "second", tmp_path / "no-such-folder")
    result = run(["dvc", "pull"], second, check=False)
    assert result.returncode != 0
    assert "failed to pull data from the cloud" in result.stderr and "data/raw" in result.stderr
    assert not (tmp_path / "no-such-folder").exists() and not (second / "models/baseline.keras").exists()

    port = free_port()  # nothing listens there
    restore_committed(project)
    for url, message in ((f"http://127.0.0.1:{port}/store", f"127.0.0.1:{port}"),
                         ("s3://compresslab-team/cache", "dvc-s3")):  # `pip install 'dvc[s3]'` is missing
        run(["dvc", "remote", "add", "--local", "down", url], project)
        try:
            result = run(["dvc", "push", "-r", "down"], project, check=False)
        finally:
            run(["dvc", "remote", "remove", "--local", "down"], project, check=False)
        assert result.returncode != 0, result.stdout
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        assert errors and message in "\n".join(errors), result.stderr
    result = run(["dvc", "pull", "-r", "nosuch"], second, check=False)
    assert result.returncode != 0 and "remote 'nosuch' doesn't exist" in result.stderr


def artifact_files(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, int]:
    """Every artifact file of a run, listed recursively, with its size."""
    found = {}
    for item in client.list_artifacts(run_id, path):
        found.update(artifact_files(client, run_id, item.path) if item.is_dir else {item.path: item.file_size})
    return found


@pytest.mark.slow(minutes=2)
def test_two_clones_sweep_at_once_into_one_tracking_server_and_lose_no_run_or_artifact(project, storage, tmp_path,
                                                                                          mlflow_server):
    """Each clone queues two experiments and runs them on two workers, both clones at the same time, all
    logging to one `mlflow server`: four summary runs arrive, each with every file, stored in the server's
    --artifacts-destination folder."""
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    # evaluate.name: a key the report stage alone reads, so each experiment re-runs only the stage that logs the
    # summary run with every file (a timing knob re-ran the eight evaluate stages of each experiment as well)
    sweeps = {"alice": ("alice-1", "alice-2"), "bob": ("bob-1", "bob-2")}
    clones = {}
    for who, values in sweeps.items():
        clones[who] = clone(project, tmp_path / who, storage)
        run(["dvc", "pull", "-q"], clones[who])
        run(["dvc", "exp", "run", "--queue", "-S", f"evaluate.name={','.join(values)}"], clones[who])
    for root in clones.values():  # the workers inherit the tracking URI
        # Output to a file: the detached workers inherit it, and with a pipe `dvc queue start` would not return
        # (the pipe stays open) until its workers exit, so the second clone's queue would start after the first.
        run("dvc queue start -j 2 > .dvc/tmp/queue-start.log 2>&1", root, env=env)
    for who, root in clones.items():
        status = wait_for_queue(root)
        assert "Failed" not in status, status
    names = {}
    for who, root in clones.items():
        found = experiments(root)
        assert sorted(e["params"]["params.yaml"]["data"]["evaluate"]["name"] for e in found.values()) == list(
            sweeps[who])
        names.update({name: who for name in found})

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("compresslab")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert len(runs) == 4  # one parent per experiment, no stray or duplicate run
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == set(names)
    destination = tmp_path / "artifacts"  # the mlflow_server fixture's --artifacts-destination
    stored = 0
    for name, who in names.items():
        summary = by_name[name]
        assert summary.data.tags["summary"] == "true" and summary.info.status == "FINISHED"
        assert summary.data.tags["dvc_exp_name"] == name
        assert summary.data.params["evaluate.name"] in sweeps[who]
        assert "pruned.int8.accuracy" in summary.data.metrics
        root = clones[who]
        tflite = md5s(root, ["models/tflite"])
        expected = SUMMARY_FILES | {f"plots/{p.name}" for p in (root / "reports/plots").iterdir()} | {
            "tflite/" + path.removeprefix("models/tflite/") for path in tflite}
        logged = artifact_files(client, summary.info.run_id)
        assert set(logged) == expected
        # Physically in the server's artifact store, not in the clone or the queue worker's temporary copy.
        uri = urllib.parse.urlparse(summary.info.artifact_uri)
        assert uri.scheme == "mlflow-artifacts", summary.info.artifact_uri
        folder = destination / uri.path.lstrip("/")
        on_disk = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
        assert set(on_disk) == expected
        assert all(on_disk[path].stat().st_size == size for path, size in logged.items())
        for path, digest in tflite.items():  # the same bytes as the clone's files
            assert hashlib.md5(on_disk["tflite/" + path.removeprefix("models/tflite/")].read_bytes()).hexdigest() \
                == digest
        assert f"name: {summary.data.params['evaluate.name']}" in on_disk["params.yaml"].read_text()
        stored += len(on_disk)
        # Each file is also a logged model of the summary (its own folder in the store), holding the same bytes.
        models = client.search_logged_models([experiment.experiment_id],
                                             filter_string=f"source_run_id = '{summary.info.run_id}'")
        files = {Path(path).stem: digest for path, digest in tflite.items() if path.endswith(".tflite")}
        assert sorted(model.name for model in models) == sorted(files)
        for model in models:
            folder = destination / urllib.parse.urlparse(model.artifact_location).path.lstrip("/")
            assert hashlib.md5((folder / "artifacts" / f"{model.name}.tflite").read_bytes()).hexdigest() \
                == files[model.name]
            stored += sum(1 for p in folder.rglob("*") if p.is_file())
    assert stored == sum(1 for p in destination.rglob("*") if p.is_file())  # nothing else, nothing orphaned
    # The two sweeps ran at the same time: each clone's executions span a stretch the other's overlap.
    spans = {who: (min(by_name[n].info.start_time for n in names if names[n] == who),
                   max(by_name[n].info.end_time for n in names if names[n] == who)) for who in sweeps}
    assert spans["alice"][0] < spans["bob"][1] and spans["bob"][0] < spans["alice"][1], spans
    for root in clones.values():
        assert not (root / "mlflow.db").exists()  # every run went to the server
