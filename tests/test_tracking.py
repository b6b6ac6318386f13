"""MLflow tracking: where runs land (DVC_ROOT rule), what they hold, and no run lost to concurrent writers."""

import subprocess
import sys
import time

import psutil

import pytest
from mlflow.tracking import MlflowClient

from compresslab.tracking import mlflow_log


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.dvc").write_text("outs:\n- md5: abc123.dir\n  path: data/raw\n")
    return tmp_path


def test_uri_and_artifacts_are_anchored_on_dvc_root(root, tmp_path_factory, monkeypatch):
    elsewhere = tmp_path_factory.mktemp("queued_copy")
    monkeypatch.chdir(elsewhere)  # a queued experiment runs in a temporary copy
    assert mlflow_log.tracking_uri() == f"sqlite:///{root.resolve() / 'mlflow.db'}"
    run_id = mlflow_log.log_run("train", params={"a": 1}, metrics={"m": 1.0})
    run = MlflowClient(mlflow_log.tracking_uri()).get_run(run_id)
    assert run.info.artifact_uri.startswith((root.resolve() / "mlartifacts").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert mlflow_log.tracking_uri() == "http://127.0.0.1:5999"


def test_a_run_holds_dotted_params_metrics_curves_tags_and_artifacts(root, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "sweep-1")
    artifact = root / "metrics.json"
    artifact.write_text("{}")
    run_id = mlflow_log.log_run("prune", params={"prune": {"final_sparsity": 0.8, "layers": "all"}},
                              metrics={"test_accuracy": 0.9, "skipped": None},
                              history={"val_accuracy": [0.5, 0.7, 0.8]}, artifacts=[artifact],
                              run_name="prune (sweep-1)")
    client = MlflowClient(mlflow_log.tracking_uri())
    run = client.get_run(run_id)
    assert run.data.params == {"prune.final_sparsity": "0.8", "prune.layers": "all"}
    assert run.data.metrics["test_accuracy"] == 0.9 and "skipped" not in run.data.metrics
    assert [m.value for m in client.get_metric_history(run_id, "val_accuracy")] == [0.5, 0.7, 0.8]
    assert run.data.tags["stage"] == "prune" and run.data.tags["dvc_exp_name"] == "sweep-1"
    assert run.data.tags["data_hash"] == "abc123.dir" and run.info.run_name == "prune (sweep-1)"
    assert [a.path for a in client.list_artifacts(run_id)] == ["metrics.json"]
    assert run.info.status == "FINISHED"


def test_a_summary_past_one_batch_lands_whole_in_as_few_batches_as_mlflow_allows(root):
    params = {"p": {f"k{i}": i for i in range(150)}}
    metrics = {f"m{i}": float(i) for i in range(1900)}
    split = list(mlflow_log.batches(list(range(150)), list(range(1900)), list(range(120))))
    assert [tuple(map(len, b)) for b in split] == [(100, 800, 100), (50, 930, 20), (0, 170, 0)]
    run_id = mlflow_log.log_summary(params=params, metrics=metrics, description="# report", tags={},
                                  artifacts=[])
    run = MlflowClient(mlflow_log.tracking_uri()).get_run(run_id)
    assert run.data.metrics == metrics
    assert {k: int(v) for k, v in run.data.params.items()} == {f"p.k{i}": i for i in range(150)}


WRITER = """
import sys
from compresslab.tracking import mlflow_log
for i in range(int(sys.argv[2])):
    mlflow_log.log_run("evaluate", params={"worker": sys.argv[1], "i": i},
                     metrics={f"m{k}": float(k) for k in range(150)})
"""


def test_concurrent_writers_lose_no_run(root):
    workers = [subprocess.Popen([sys.executable, "-c", WRITER, str(w), "4"], cwd=root) for w in range(4)]
    assert [w.wait(timeout=300) for w in workers] == [0, 0, 0, 0]
    client = MlflowClient(mlflow_log.tracking_uri())
    experiment = client.get_experiment_by_name(mlflow_log.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], "tags.stage != 'pipeline'", max_results=100)
    assert sorted((r.data.params["worker"], r.data.params["i"]) for r in runs) == sorted(
        (str(w), str(i)) for w in range(4) for i in range(4))
    assert all(len(r.data.metrics) == 150 for r in runs)


def test_stage_runs_nest_under_one_parent_per_execution_and_span_the_stage(root, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "sweep-2")
    first = mlflow_log.log_run("train", params={"a": 1}, metrics={"m": 1.0})
    second = mlflow_log.log_run("prune", params={"a": 1}, metrics={"m": 2.0})
    client = MlflowClient(mlflow_log.tracking_uri())
    experiment = client.get_experiment_by_name(mlflow_log.EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {run_id: client.get_run(run_id) for run_id in (first, second)}
    parents = {run.data.tags["mlflow.parentRunId"] for run in runs.values()}
    assert len(parents) == 1  # one execution (this process), one parent
    parent = client.get_run(parents.pop())
    assert parent.info.run_name == "sweep-2" and parent.data.tags["stage"] == "pipeline"
    assert parent.info.status == "RUNNING"  # until the report stage closes the execution
    for run in runs.values():
        assert run.data.tags["mlflow.source.name"] == f"stages/{run.data.tags['stage']}.py"
        # The run starts when the stage's process started, not when it was logged.
        assert run.info.end_time - run.info.start_time >= (time.time() - psutil.Process().create_time() - 60) * 1000
    summary_id = mlflow_log.log_summary(params={"prune": {"final_sparsity": 0.5}},
                                      metrics={"baseline.float32.accuracy": 0.9}, description="# report\n\nbody",
                                      tags={"files": "1"}, artifacts=[])
    summary = client.get_run(summary_id)
    assert summary_id == parent.info.run_id and summary.info.status == "FINISHED"
    assert summary.data.tags["mlflow.note.content"].startswith("# report")
    assert summary.data.tags["summary"] == "true" and summary.data.params["prune.final_sparsity"] == "0.5"
    assert summary.data.metrics["baseline.float32.accuracy"] == 0.9


def test_a_long_report_is_cut_at_a_section_and_points_at_the_full_one():
    report = "# report\n\n## Results\n\n" + "row\n" * 100 + "\n## Notes\n\n" + "note\n" * 100
    assert mlflow_log.fit_description(report, limit=10_000) == report
    cut = mlflow_log.fit_description(report, limit=500)
    assert len(cut) <= 500 and cut.startswith("# report\n\n## Results")
    assert "## Notes" not in cut and cut.endswith("artifact `report.md`.*\n")


def test_a_dataset_created_by_a_concurrent_run_is_linked_on_the_next_try(root):
    """Seen with two clones' queue workers reporting to one `mlflow server` at once: the server inserts a new
    dataset without a lock, and the slower run failed on the datasets unique key. The retry links it."""
    from mlflow.exceptions import RestException

    from compresslab.tracking import lineage

    client = MlflowClient(mlflow_log.tracking_uri())
    run_id = client.create_run(mlflow_log.experiment_id(client)).info.run_id
    dataset = lineage.dataset_input(mlflow_log.DATA_DVC, root, context="report")
    race = RestException({"error_code": "BAD_REQUEST", "message": "(sqlite3.IntegrityError) UNIQUE constraint failed: "
                          "datasets.experiment_id, datasets.name, datasets.digest"})
    calls = []

    class ConcurrentServer:   # the first call loses the race, as the server answered; the next reaches the store
        def log_inputs(self, run_id, datasets):
            calls.append(run_id)
            if len(calls) == 1:
                raise race
            client.log_inputs(run_id, datasets=datasets)

    mlflow_log.log_inputs(ConcurrentServer(), run_id, [dataset])
    assert len(calls) == 2
    assert [d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs] == ["data/raw"]
    other = RestException({"error_code": "BAD_REQUEST", "message": "unrelated failure"})

    class Broken:
        def log_inputs(self, run_id, datasets):
            calls.append(run_id)
            raise other

    calls.clear()
    with pytest.raises(RestException, match="unrelated failure"):
        mlflow_log.log_inputs(Broken(), run_id, [dataset])
    assert len(calls) == 1   # not retried
