"""The chosen file into the MLflow Model Registry of a real `mlflow server` on 127.0.0.1: version, tags, alias,
and the file back by `models:/NAME@champion`."""

import hashlib

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from compresslab.tools import registry
from compresslab.errors import UserError
from conftest import REPO, read_json, restore_committed, run


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow(minutes=1.2)
def test_the_chosen_file_is_registered_with_its_lineage_and_a_better_choice_moves_the_alias(project, mlflow_server,
                                                                                            tmp_path):
    restore_committed(project)
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    run(["dvc", "exp", "run", "-n", "reg-a", "-S", "evaluate.min_runs=6"], project, env=env)  # evaluate re-runs
    result = run(["compresslab", "compare", "--experiments", "reg-a", "--max-drop", "100", "--register", "edge"],
                 project, env=env)
    chosen = read_json(project / "reports" / "compare" / "selection.json")["chosen"]
    label = f"{chosen['variant']}-{chosen['mode']}"
    assert f"registered {label}.tflite as edge version 1; champion now names version 1" in result.stdout

    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("edge", "champion")
    assert version.version == "1" and version.run_id == chosen["run_id"]
    tags = version.tags
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    data_md5 = next(line.split()[-1] for line in (project / "data.dvc").read_text().splitlines() if "md5" in line)
    assert tags["dvc_exp_name"] == "reg-a" and tags["git_commit"] == head and tags["data_hash"] == data_md5
    assert any(key.startswith("dvc.dep.reports/evaluate/") for key in tags)   # the dvc.lock hashes it came from
    assert tags["param.evaluate.min_runs"] == "6" and "param.prune.final_sparsity" in tags
    # The rule compare and search share: the run's float control, on the validation split.
    assert tags["selection.rule"] == "the smallest file within 100 pp of its run's finetune-float32 on the " \
                                     "validation split"
    assert tags["selection.reference"] == "finetune-float32" and tags["selection.split"] == "val"
    assert tags["selection.max_drop_pp"] == "100.0" and tags["selection.objective"] == "size"
    assert float(tags["gzip_bytes"]) == chosen["gzip_bytes"] and tags["file"] == f"{label}.tflite"

    # The file back through the alias is the experiment's file, byte for byte (`dvc exp run` left it here).
    mlflow.set_tracking_uri(mlflow_server)
    folder = mlflow.artifacts.download_artifacts("models:/edge@champion", dst_path=str(tmp_path / "back"))
    (back,) = list((tmp_path / "back").iterdir()) if folder else []
    assert back.name == f"{label}.tflite"
    assert md5(back) == tags["file_md5"] == md5(project / "models" / "tflite" / chosen["variant"] / back.name)

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
    # The registered file is logged once into its run, whatever the number of versions.
    logged = client.list_artifacts(chosen["run_id"], f"registry/{label}")
    assert [item.path for item in logged] == [f"registry/{label}/{label}.tflite"]


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
