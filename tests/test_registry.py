"""The chosen file into the MLflow Model Registry of a real `mlflow server` on 127.0.0.1: version, tags, alias,
and the file back by `models:/NAME@champion`."""

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from compresslab.data import shards
from compresslab.tools import registry
from compresslab.errors import UserError
from conftest import BIN, REPO, free_port, read_json, restore_committed, run, started_server



def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def served(model_uri: str, images: np.ndarray, env: dict, cwd: Path, log: Path) -> dict:
    """Start `mlflow models serve` on a free loopback port, POST the images and three bad requests to
    /invocations, and say what it answered and whether it still answers afterwards."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def post(body) -> tuple[int, dict]:
        request = urllib.request.Request(f"{base}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    with started_server([str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                         "-h", "127.0.0.1", "-p", str(port), "-w", "1"], f"{base}/ping", cwd, env=env, log=log):
        status, good = post({"inputs": images.tolist()})
        assert status == 200, good
        rows = good["predictions"]
        answered = {"good": {"class_index": [row["class_index"] for row in rows],
                             "class": [row["class"] for row in rows]}}
        for bad, body in (("shape", {"inputs": images[:, :-1].tolist()}),
                          ("dtype", {"inputs": [[["a"]]]}), ("garbage", {"nothing": 1})):
            status, error = post(body)
            answered[bad] = {"status": status, "message": error.get("message")}
        answered["alive_after"] = post({"inputs": images[:1].tolist()})[0] == 200
        return answered


@pytest.mark.slow(minutes=2.5)
def test_the_chosen_file_is_registered_with_its_lineage_and_a_better_choice_moves_the_alias(project, mlflow_server,
                                                                                            tmp_path):
    restore_committed(project)
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    # Evaluate re-runs, and every float variant converts to the quantizer's modes too (the smoke preset has the
    # converter's four), mixed precision per layer included: the choice is among them all, and whichever it is,
    # MLflow and DVC serve it.
    run(["dvc", "exp", "run", "-n", "reg-a", "-S", "evaluate.min_runs=6", "-S", "convert.mixed.ratio=3",
         "-S", "convert.modes=[float32,dynamic,float16,int8,int4,int8_weights,mixed]"], project, env=env)
    allocations = read_json(project / "reports" / "allocation.json")
    files = pd.read_csv(project / "reports" / "variants.csv")
    assert sorted(allocations) == sorted(f"{variant}-mixed" for variant in files["variant"].unique()
                                         if variant not in ("qat", "pqat", "cqat", "pcqat"))
    for name, allocation in allocations.items():   # the file evaluated is the file allocated
        row = files[(files["variant"] + "-" + files["mode"]) == name].iloc[0]
        assert row["gzip_bytes"] == allocation["gzip_bytes"], name
        assert {layer["precision"] for layer in allocation["layers"]} <= {"int4", "int8", "float32"}
    assert "## Per-layer bit allocation (mode `mixed`)" in (project / "reports" / "report.md").read_text()
    # Every quantized file of a float variant has its per-tensor error table against its float32 twin.
    tensor_errors = read_json(project / "reports" / "tensor_error.json")
    quantized = files[(files["mode"] != "float32") & ~files["variant"].isin(["qat", "pqat", "cqat", "pcqat"])]
    assert sorted(tensor_errors) == sorted(quantized["variant"] + "-" + quantized["mode"])
    assert all(errors and all(e["cosine"] is None or -1 <= e["cosine"] <= 1 for e in errors)
               for errors in tensor_errors.values())
    result = run(["compresslab", "compare", "--experiments", "reg-a", "--max-drop", "100", "--register", "edge"],
                 project, env=env)
    chosen = read_json(project / "reports" / "compare" / "selection.json")["chosen"]
    label = f"{chosen['variant']}-{chosen['mode']}"
    assert f"registered {label}.tflite as edge version 1; champion now names version 1" in result.stdout
    assert "declared it as artifact edge in dvc.yaml" in result.stdout

    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("edge", "champion")
    assert version.version == "1" and version.run_id == chosen["run_id"]
    tags = version.tags
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    data_md5 = next(line.split()[-1] for line in (project / "data.dvc").read_text().splitlines() if "md5" in line)
    assert tags["dvc_exp_name"] == "reg-a" and tags["git_commit"] == head and tags["data_hash"] == data_md5
    assert "dvc.dep.reports/evaluate" in tags   # the dvc.lock hashes it came from
    assert tags["param.evaluate.min_runs"] == "6" and "param.prune.final_sparsity" in tags
    # The rule compare and search share: the run's float control, on the validation split.
    assert tags["selection.rule"] == "the smallest file within 100 pp of its run's finetune-float32 on the " \
                                     "validation split"
    assert tags["selection.reference"] == "finetune-float32" and tags["selection.split"] == "val"
    assert tags["selection.max_drop_pp"] == "100.0" and tags["selection.objective"] == "size"
    assert float(tags["gzip_bytes"]) == chosen["gzip_bytes"] and tags["file"] == f"{label}.tflite"

    # The file back through the alias is the experiment's file, byte for byte (`dvc exp run` left it here).
    mlflow.set_tracking_uri(mlflow_server)
    folder = Path(mlflow.artifacts.download_artifacts("models:/edge@champion", dst_path=str(tmp_path / "back")))
    back = folder / "artifacts" / f"{label}.tflite"
    assert md5(back) == tags["file_md5"] == md5(project / "models" / "tflite" / chosen["variant"] / back.name)
    requirements = (folder / "requirements.txt").read_text()
    assert "ai-edge-litert==" in requirements and "tensorflow" not in requirements
    assert (folder / "input_example.json").is_file()   # three of the project's test images

    # DVC's registry finds it too, as it finds every file of models/dvc.yaml, once committed and tagged by GTO.
    declared = yaml.safe_load((project / "dvc.yaml").read_text())["artifacts"]["edge"]
    assert declared["path"] == f"models/tflite/{chosen['variant']}/{label}.tflite" and declared["type"] == "model"
    assert declared["meta"] == {"mlflow_model": "edge", "mlflow_version": "1", "md5": tags["file_md5"]}
    run(["git", "commit", "-qam", "the chosen file as a DVC artifact"], project)
    baseline_file = project / "models" / "tflite" / "baseline" / "baseline-float32.tflite"
    for artifact, made in (("edge", back), ("models:baseline-float32", baseline_file)):
        run(["gto", "register", artifact], project)
        got = tmp_path / artifact.replace(":", "-")
        run(["dvc", "artifacts", "get", ".", artifact, "-o", str(got)], project)
        assert md5(got) == md5(made), artifact

    # The version is a model MLflow loads and serves with LiteRT, answering as `evaluate` did for that file.
    test = shards.open_split("test", project / "data" / "prepared")
    images = test.take(range(shards.count(test)))   # every test image the tiny project has
    evaluated = next(row for row in read_json(project / "reports" / "evaluate" / f"{chosen['variant']}.json")["rows"]
                     if row["mode"] == chosen["mode"])["y_pred"]
    class_names = shards.load_meta(project / "data" / "prepared")["class_names"]
    predicted = mlflow.pyfunc.load_model("models:/edge@champion").predict(images)
    assert predicted["class_index"].tolist() == evaluated
    assert predicted["class"].tolist() == [class_names[k] for k in evaluated]
    assert np.allclose([sum(p) for p in predicted["probabilities"]], 1, atol=1e-2)   # softmax scores
    with pytest.raises(MlflowException, match="shape"):
        mlflow.pyfunc.load_model("models:/edge@champion").predict(images[:, :-1])
    answered = served("models:/edge@champion", images, env, project, tmp_path / "serve.log")
    assert answered["good"]["class_index"] == evaluated and answered["good"]["class"] == predicted["class"].tolist()
    for bad in ("shape", "dtype", "garbage"):
        assert answered[bad]["status"] == 400 and answered[bad]["message"], answered[bad]
    assert answered["alive_after"]

    # A larger file leaves the alias where it is; an equal or smaller one moves it.
    summary = client.get_run(chosen["run_id"])
    larger = summary.data.metrics["baseline.float32.gzip_bytes"]
    assert larger > chosen["gzip_bytes"]
    kept = registry.register("edge", run_id=chosen["run_id"], variant="baseline", mode="float32",
                             figures={"gzip_bytes": larger}, rule={"rule": "test"}, uri=mlflow_server)
    assert (kept.version, kept.alias_moved) == ("2", False) and "stays on version 1" in kept.why
    assert client.get_model_version_by_alias("edge", "champion").version == "1"
    moved = registry.register("edge", run_id=chosen["run_id"], variant=chosen["variant"], mode=chosen["mode"],
                              figures={"gzip_bytes": chosen["gzip_bytes"]}, rule={"rule": "test"}, uri=mlflow_server)
    assert (moved.version, moved.alias_moved) == ("3", True)
    assert client.get_model_version_by_alias("edge", "champion").version == "3"
    # The report logged every file as a model of its summary run (the Models tab), with its figures and
    # lineage; registering, however often, logs no other.
    experiment = client.get_run(chosen["run_id"]).info.experiment_id
    logged = client.search_logged_models([experiment], filter_string=f"source_run_id = '{chosen['run_id']}'")
    files = pd.read_csv(project / "reports" / "variants.csv")
    assert sorted(model.name for model in logged) == sorted(files["variant"] + "-" + files["mode"])
    model = next(model for model in logged if model.name == label)
    figures = {metric.key.removeprefix("file."): metric.value for metric in model.metrics}
    row = files[(files["variant"] == chosen["variant"]) & (files["mode"] == chosen["mode"])].iloc[0]
    assert figures["gzip_bytes"] == row["gzip_bytes"] and figures["accuracy"] == pytest.approx(row["accuracy"])
    assert figures["latency_ratio"] == pytest.approx(row["latency_ratio"])
    assert model.tags["dvc_exp_name"] == "reg-a" and model.tags["file_md5"] == tags["file_md5"]
    assert version.source == model.artifact_location   # the version is that model


@pytest.mark.parametrize("name, alias", [("a/b", "champion"), ("", "champion"), ("edge", "latest"),
                                         ("edge", "v2"), ("edge", "two words")])
def test_names_mlflow_would_refuse_are_one_clear_error(name, alias):
    with pytest.raises(UserError) as error:
        registry.check_name(name, alias)
    assert "\n" not in str(error.value) and ("--register" in str(error.value) or "--alias" in str(error.value))


def test_compare_needs_a_choice_to_register():
    result = run(["compresslab", "compare", "--register", "edge"], REPO, check=False)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "pass --max-drop" in result.stderr
