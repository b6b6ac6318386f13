"""End to end: the real `dvc repro` / `dvc exp run` on a tiny copy of the project (the `smoke` preset).

One module-scoped `project` runs the whole pipeline once; the tests then read its outputs, MLflow store and
DVC state, and run experiments that change one knob each, checking which stages re-ran.
"""

import json

import pytest
from mlflow.tracking import MlflowClient

from compresslab import variants
from compresslab.tracking import mlflow_log
from conftest import mlflow_runs, per_variant, read_json, run, stages_ran

pytestmark = pytest.mark.slow

TRAINING_STAGES = {"train", "finetune", "prune", "quantize", "pqat", "cluster", "cqat", "pcqat"}
ALL_STAGES = {"prepare", *TRAINING_STAGES, "report", *(f"{kind}@{variant}" for kind in ("convert", "evaluate", "device")
                                                        for variant in variants.VARIANTS)}
FILES = [f"{v}-{m}" for v in variants.FLOAT_VARIANTS for m in ("float32", "dynamic", "float16", "int8")] + [
    f"{v}-int8" for v in variants.QAT_VARIANTS]


def test_repro_runs_every_stage_and_writes_every_output(project):
    assert set(stages_ran((project / ".git" / "first_repro.log").read_text())) == ALL_STAGES
    for name in variants.VARIANTS:
        assert (project / "models" / f"{name}.keras").stat().st_size > 0
    tflite = sorted((project / "models" / "tflite").rglob("*.tflite"))
    assert sorted(p.stem for p in tflite) == sorted(FILES)
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in tflite)  # readable by others on a shared machine
    for path in ("reports/metrics.json", "reports/variants.csv", "reports/report.md", "reports/plots/tradeoff.png",
                 "reports/plots/latency.png", "reports/plots/tradeoff.csv", "reports/plots/confusion.csv"):
        assert (project / path).stat().st_size > 0, path
    counts = read_json(project / "reports/prepare/metrics.json")["classes"]
    assert set(counts) == {"train", "val", "test"} and all(set(c) == {"fire", "no_fire", "smoke"}
                                                           for c in counts.values())
    # The default pipeline; analysis/dvc.yaml's stages are run only when asked (test_sensitivity.py).
    assert "Data and pipelines are up to date" in run(["dvc", "status", "dvc.yaml"], project).stdout


def test_int8_files_are_smaller_and_pruned_sparsity_survives_conversion(project):
    import pandas as pd

    from compresslab.models.saving import load_model
    from compresslab.techniques.weights import sparsity_report

    rows = pd.read_csv(project / "reports/variants.csv").set_index(["variant", "mode"])
    assert len(rows) == len(FILES) and rows["error"].isna().all()
    for variant in variants.FLOAT_VARIANTS:
        assert rows.loc[(variant, "int8"), "file_bytes"] < rows.loc[(variant, "float32"), "file_bytes"] / 3
    keras_sparsity = sparsity_report(load_model(project / "models/pruned.keras"))["overall"]
    assert keras_sparsity == pytest.approx(0.5, abs=0.02)
    assert rows.loc[("pruned", "float32"), "sparsity"] == pytest.approx(keras_sparsity, abs=1e-6)
    assert rows.loc[("pruned", "int8"), "sparsity"] == pytest.approx(keras_sparsity, abs=0.01)
    assert rows.loc[("baseline", "float32"), "gzip_ratio"] == 1.0
    compressed = rows.drop(index=("finetune", "float32"))  # the control is a float32 file like the baseline
    assert (compressed["gzip_ratio"] <= 1.0).all()
    assert rows.loc[("finetune", "float32"), "gzip_ratio"] == pytest.approx(1.0, abs=0.01)


def test_compression_stages_report_what_they_measured(project):
    prune = read_json(project / "reports/prune/metrics.json")
    assert prune["target_sparsity"] == 0.5 and abs(prune["sparsity"] - 0.5) < 0.02
    pqat = read_json(project / "reports/pqat/metrics.json")
    assert abs(pqat["sparsity_drift"]) < 0.02
    cluster = read_json(project / "reports/cluster/metrics.json")
    assert cluster["requested_clusters"] == 8 and 1 < cluster["max_unique_values"] <= 8
    pcqat = read_json(project / "reports/pcqat/metrics.json")
    assert abs(pcqat["sparsity"] - pcqat["parent_sparsity"]) < 0.02
    history = (project / "reports/prune/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 2  # smoke: one fine-tuning epoch


def test_mlflow_holds_one_parent_per_execution_with_every_stage_nested_and_the_summary(project):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert client.get_experiment_by_name("compresslab").tags["mlflow.experimentKind"] == "custom_model_development"
    stages = {run_.data.tags["stage"] for run_ in mlflow_runs(project)}
    assert stages == TRAINING_STAGES | {"pipeline"}  # convert and evaluate log into the summary
    (summary,) = mlflow_runs(project, summary="true", dvc_exp_name="workspace")
    assert summary.data.tags["stage"] == "pipeline" and summary.info.run_name == "workspace"
    assert summary.info.status == "FINISHED"
    children = mlflow_runs(project, dvc_exp_name="workspace")
    assert {r.data.tags.get("mlflow.parentRunId") for r in children if r.data.tags["stage"] != "pipeline"} == {
        summary.info.run_id}
    assert summary.data.params["prune.final_sparsity"] == "0.5"
    assert summary.data.params["model.name"] == "firenet"
    # Each training stage's run holds every group it reads: how the data was shuffled and augmented too.
    (prune_run,) = mlflow_runs(project, stage="prune", dvc_exp_name="workspace")
    assert {"data.shuffle_buffer", "data.augment.flip", "train.batch_size", "prune.final_sparsity"} <= \
        set(prune_run.data.params)
    assert 0 <= summary.data.metrics["pruned.int8.accuracy"] <= 1
    assert summary.data.metrics["baseline.float32.gzip_ratio"] == 1.0
    assert 0 <= summary.data.metrics["pruned.int8.p_value"] <= 1
    assert "finetune.float32.accuracy_delta_pp" in summary.data.metrics
    assert summary.data.tags["git_commit"] and summary.data.tags["data_hash"].endswith(".dir")
    report = (project / "reports/report.md").read_text()
    assert summary.data.tags["mlflow.note.content"] == mlflow_log.fit_description(report)
    assert summary.data.tags["mlflow.note.content"].startswith("# compresslab report\n\n## Configuration")
    assert summary.data.tags["mlflow.source.name"] == "stages/report.py"
    (train,) = mlflow_runs(project, stage="train", dvc_exp_name="workspace")
    curve = client.get_metric_history(train.info.run_id, "val_accuracy")
    assert len(curve) == read_json(project / "reports/train/metrics.json")["epochs_run"]
    # The run spans the stage's process: longer than its epochs alone, and the parent spans every stage.
    epochs = sum(m.value for m in client.get_metric_history(train.info.run_id, "epoch_seconds"))
    assert train.info.end_time - train.info.start_time > epochs * 1000
    assert summary.info.start_time <= train.info.start_time and summary.info.end_time >= train.info.end_time
    artifacts = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert {"report.md", "variants.csv", "metrics.json", "dvc.lock", "params.yaml", "plots", "tflite"} <= artifacts
    assert "tflite/pruned/pruned-int8.tflite" in {a.path for a in client.list_artifacts(summary.info.run_id,
                                                                                          "tflite/pruned")}


@pytest.mark.parametrize("override, readers", [
    ("train.epochs=3", {"train"}),
    ("data.seed=7", {"prepare"}),
    ("prune.final_sparsity=0.8", {"prune"}),
    ("quantize.layers=dense", {"quantize"}),
    ("cluster.number_of_clusters=4", {"cluster", "pcqat"}),
    ("evaluate.threads=[1,2]", {f"evaluate@{v}" for v in variants.VARIANTS} | {"report"}),
    ("evaluate.devices=[{name: pi, host: pi}]", {f"device@{v}" for v in variants.VARIANTS} | {"report"}),
    ("prune.epochs=2", {"prune", "finetune"}),  # the control keeps the compression budget
    ("data.name=renamed", set()),
    ("sensitivity.sparsity=0.5", set()),  # read by analysis/dvc.yaml:sensitivity only
])
def test_each_param_is_read_only_by_its_stages(project, override, readers):
    run(["compresslab", "params", "-S", override], project)
    try:
        status = json.loads(run(["dvc", "status", "--json", "dvc.yaml"], project).stdout or "{}")
    finally:
        run(["compresslab", "params"], project)
    assert set(status) == readers


@pytest.mark.slow(minutes=4)
def test_exp_run_reruns_only_what_the_knob_touches(project):
    # First, while the workspace still matches the commit: a key no stage reads re-runs nothing.
    result = run(["dvc", "exp", "run", "-S", "data.name=renamed", "-n", "nothing"], project)
    assert stages_ran(result.stdout) == []
    result = run(["dvc", "exp", "run", "-S", "prune.final_sparsity=0.8", "-n", "sparse80"], project)
    assert set(stages_ran(result.stdout)) == {"prune", "pqat", "pcqat", *per_variant("pruned", "pqat", "pcqat"),
                                              "report"}
    assert read_json(project / "reports/prune/metrics.json")["sparsity"] == pytest.approx(0.8, abs=0.02)
    result = run(["dvc", "exp", "run", "-S", "quantize.layers=dense", "-n", "dense-qat"], project)
    assert set(stages_ran(result.stdout)) == {"quantize", *per_variant("qat"), "report"}
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    experiments = {exp["name"]: exp for rev in shown for exp in rev.get("experiments") or []}
    assert {"sparse80", "dense-qat"} <= set(experiments)
    sparse = experiments["sparse80"]["revs"][0]["data"]
    assert sparse["params"]["params.yaml"]["data"]["prune"]["final_sparsity"] == 0.8
    assert "pruned" in sparse["metrics"]["reports/metrics.json"]["data"]
    names = {r.data.tags["dvc_exp_name"] for r in mlflow_runs(project, summary="true")}
    assert {"sparse80", "dense-qat"} <= names


def test_the_control_is_evaluated_and_report_and_compare_carry_the_statistics(project):
    import pandas as pd

    rows = pd.read_csv(project / "reports/variants.csv").set_index(["variant", "mode"])
    for column in ("test_images", "accuracy_ci_low", "accuracy_ci_high", "p_value", "significant",
                   "accuracy_delta_control_pp", "keras_agreement", "baseline_agreement", "latency_ratio_t1"):
        assert rows[column].notna().all(), column
    assert (rows["accuracy_ci_low"] <= rows["accuracy"]).all() and (rows["accuracy"] <= rows["accuracy_ci_high"]).all()
    assert rows.loc[("finetune", "float32"), "accuracy_delta_control_pp"] == 0.0
    assert (rows["keras_agreement"] > 0.5).all()  # a conversion bug would show here
    report = (project / "reports/report.md").read_text()
    assert "acc % [95% CI]" in report and "Δ ctrl pp" in report and "The float control" in report
    result = run(["compresslab", "compare"], project)
    assert "single-seed comparison" in result.stdout
    table = pd.read_csv(project / "reports/compare/compare.csv")
    assert {"accuracy_ci_low", "p_value", "accuracy_delta_control_pp", "latency_ratio"} <= set(table.columns)
    control = table[(table.variant == "finetune") & (table["mode"] == "float32")]
    assert control["accuracy_delta_control_pp"].iloc[0] == 0


def test_a_cpu_only_repro_logs_no_tensorflow_start_up_noise(pipeline_results):
    """oneDNN notices and `failed call to cuInit` on a machine without a GPU, 16 times a run, read as failures."""
    log = (pipeline_results / ".git" / "first_repro.log").read_text()
    assert "Running stage 'pcqat'" in log and "pcqat: test accuracy" in log
    noise = ("cuInit", "cuda", "oneDNN custom operations are on", "All log messages before absl::InitializeLog")
    assert [line for line in log.splitlines() if any(word in line for word in noise)] == []
