"""Experiments at scale, end to end: a queued sweep with two workers plus a study preset (the EfficientNet study,
`dvc exp run -S model=efficientnet_lite0` through the whole pipeline) writing to a real `mlflow server` on
127.0.0.1, and the summary runs compared through its REST API."""

import json
import time
import urllib.request

import pytest

from mlflow.tracking import MlflowClient

from compresslab import variants
from compresslab.tools.dvc_queue import queue_state
from conftest import restore_committed, run

pytestmark = pytest.mark.slow

SWEEP = (0.7,)   # one setting beside the preset: two experiments for the two workers
# The EfficientNet study preset, its default model EfficientNet-Lite0 run end to end (every technique, every file
# evaluated) at the family's smallest width and depth on 32x32 images, epochs and timing cut (as in the smoke
# preset) so it runs in a test. Only the classifier is clustered: TFMOT's cluster-preserving QAT of every layer
# traces for 90 s before its first step.
LITE0_QUICK = ["experiment=efficientnet_study", "model=efficientnet_lite0", "model.alpha=0.25", "model.depth=0.25",
               "data.image_size=32", "data.max_images_per_class=30", "train.epochs=2", "prune.epochs=1",
               "quantize.epochs=1", "pqat.epochs=1", "cluster.epochs=1", "cluster.layers=dense", "cqat.epochs=1",
               "pcqat.cluster_epochs=1", "pcqat.epochs=1", "convert.modes=[float32,int8]", "evaluate.threads=[1]",
               "evaluate.warmup_runs=2", "evaluate.min_runs=5", "evaluate.min_seconds=0.05", "evaluate.ratio_rounds=4",
               "evaluate.measure_memory=false", "evaluate.profile_seconds=0.05"]


def experiments(root) -> dict:
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    return {exp["name"]: exp["revs"][0]["data"] for rev in shown for exp in rev.get("experiments") or []}


def wait_for_queue(root, timeout=1500) -> dict[str, str]:
    """{experiment: status} once no experiment is queued or running (read in this process, as the search does:
    a `dvc queue status` per poll costs a second of CPU that the queue's workers need)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, _ = queue_state(root)
        if not {"Queued", "Running"} & set(status.values()):
            return status
        time.sleep(10)
    raise AssertionError(f"queue still busy after {timeout} s: {status}")


def rest(base, path, payload=None):
    """POST `payload` as JSON to MLflow's REST API (GET when there is none); returns the decoded answer."""
    body = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow(minutes=9)
def test_queued_sweep_and_preset_land_in_dvc_and_in_a_real_mlflow_server(project, mlflow_server):
    """Two queue workers write to one MLflow server: every run arrives, nested under its own execution's parent,
    and the REST API finds each summary by its setting."""
    restore_committed(project)
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    earlier = set(experiments(project))   # other modules' experiments on the shared project (e.g. search probes)
    run(["dvc", "exp", "run", "--queue", "-S", f"prune.final_sparsity={','.join(map(str, SWEEP))}"], project)
    run(["dvc", "exp", "run", "--queue", "-n", "lite0-quick", *[a for o in LITE0_QUICK for a in ("-S", o)]],
        project)
    run(["dvc", "queue", "start", "-j", "2"], project, env=env)  # the workers inherit the tracking URI
    status = wait_for_queue(project)
    assert "Failed" not in status.values(), f"{status}\n" + run(["dvc", "queue", "logs", "lite0-quick"], project,
                                                                 False).stdout
    found = {name: exp for name, exp in experiments(project).items() if name not in earlier}
    swept = {}
    for name, exp in found.items():
        params = exp["params"]["params.yaml"]["data"]
        if params.get("experiment", {}) and params["experiment"].get("name") == "efficientnet_study":
            continue
        swept[params["prune"]["final_sparsity"]] = (name, exp)
    assert set(SWEEP) <= set(swept)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("compresslab")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    for sparsity in SWEEP:
        name, exp = swept[sparsity]
        measured = exp["metrics"]["reports/prune/metrics.json"]["data"]["sparsity"]
        assert measured == pytest.approx(sparsity, abs=0.03)
        (summary,) = [r for r in runs if r.data.tags.get("summary") == "true" and r.info.run_name == name]
        assert summary.data.params["prune.final_sparsity"] == str(sparsity)
        assert "pruned.int8.accuracy" in summary.data.metrics and summary.info.status == "FINISHED"
        # Only prune, pqat and pcqat trained in this experiment; each is a child of its own parent.
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary.info.run_id]
        assert sorted(r.data.tags["stage"] for r in children) == ["pcqat", "pqat", "prune"]
        assert all(r.data.tags["dvc_exp_name"] == name for r in children)
        for child in children:
            epochs = sum(m.value for m in client.get_metric_history(child.info.run_id, "epoch_seconds"))
            assert child.info.end_time - child.info.start_time > epochs * 1000
        assert summary.data.tags["mlflow.note.content"].startswith("# compresslab report")
        assert {a.path for a in client.list_artifacts(summary.info.run_id)} >= {"report.md", "plots", "tflite"}
    children = [r for r in runs if r.data.tags.get("stage") not in (None, "pipeline")]
    parents = {r.info.run_id for r in runs if r.data.tags.get("stage") == "pipeline"}
    assert all(r.data.tags.get("mlflow.parentRunId") in parents for r in children)  # none orphaned
    preset = found["lite0-quick"]
    assert preset["params"]["params.yaml"]["data"]["model"]["name"] == "efficientnet_lite0"
    from compresslab.models import zoo   # noqa: PLC0415

    lite0 = zoo.build_model({"name": "efficientnet_lite0", "alpha": 0.25, "depth": 0.25}, (32, 32, 3), 3)
    assert preset["metrics"]["reports/train/metrics.json"]["data"]["parameters"] == zoo.count_parameters(lite0)
    assert preset["metrics"]["reports/prune/metrics.json"]["data"]["sparsity"] == pytest.approx(0.5, abs=0.03)
    evaluated = preset["metrics"]["reports/metrics.json"]["data"]
    assert set(evaluated) == set(variants.VARIANTS)   # every variant evaluated
    assert all(0 <= evaluated[variant]["int8"]["accuracy"] <= 1 for variant in variants.VARIANTS)
    (preset_summary,) = [r for r in runs if r.data.tags.get("summary") == "true" and r.info.run_name == "lite0-quick"]
    assert preset_summary.data.params["model.name"] == "efficientnet_lite0"
    preset_children = {r.data.tags["stage"] for r in runs
                       if r.data.tags.get("mlflow.parentRunId") == preset_summary.info.run_id}
    assert preset_children == {"train", "finetune", "prune", "quantize", "pqat", "cluster", "cqat", "pcqat"}

    # The same summaries through MLflow's REST API, as the UI and other tools search them: one per setting.
    experiment_id = rest(mlflow_server, "experiments/get-by-name?experiment_name=compresslab")["experiment"][
        "experiment_id"]
    sweep_name = swept[SWEEP[0]][0]
    for name, setting in ((sweep_name, f"params.`prune.final_sparsity` = '{SWEEP[0]}'"),
                          ("lite0-quick", "params.`model.name` = 'efficientnet_lite0'")):
        found = rest(mlflow_server, "runs/search", {"experiment_ids": [experiment_id],
                                                    "filter": f"{setting} and tags.summary = 'true'"})["runs"]
        assert len(found) == 1, setting
        tags = {t["key"]: t["value"] for t in found[0]["data"]["tags"]}
        metrics = {m["key"]: m["value"] for m in found[0]["data"]["metrics"]}
        assert tags["dvc_exp_name"] == name and found[0]["info"]["run_name"] == name
        assert 0 <= metrics["pruned.int8.accuracy"] <= 1 and metrics["baseline.float32.gzip_ratio"] == 1.0
    both = rest(mlflow_server, "runs/search", {"experiment_ids": [experiment_id],
                                               "filter": "tags.summary = 'true'"})["runs"]
    assert sorted(r["info"]["run_name"] for r in both) == sorted([sweep_name, "lite0-quick"])
