"""The MLflow Model Registry: the chosen `.tflite` file as a new version of a registered model.

    compresslab compare --max-drop 1 --register firenet        # the smallest file within 1 pp
    compresslab search prune.final_sparsity --max-drop 1 --register firenet
    mlflow.pyfunc.load_model("models:/firenet@champion").predict(images)   # anywhere the server is reachable

A classifier's version is an MLflow model logged into the summary run it came from (named by its label,
`tracking/litert_pyfunc.py`: LiteRT, no TensorFlow), so `mlflow.pyfunc.load_model("models:/NAME@ALIAS")`
predicts, `mlflow models serve -m models:/NAME@ALIAS --env-manager local` answers, and the file itself is its
artifact `artifacts/<label>.tflite`, byte for byte. A detector's version is a folder holding only the chosen
file (`registry/<label>/`): its decoding (anchors, NMS) is not served yet. The version carries the
run's lineage (data hash, git commit, DVC experiment, the dvc.lock hashes the report stage read), the file's
md5 and figures, the experiment's params (`param.<key>`) and the selection rule (`selection.*`) as tags.

The alias (`champion` by default) moves to the new version unless the version it names is better by the same
objective (smaller gzipped size, or a lower latency ratio); either way the command says which and why.
"""

import hashlib
import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compresslab import variants
from compresslab.errors import UserError
from compresslab.results.selection import OBJECTIVES

DEFAULT_ALIAS = "champion"
ARTIFACT_DIR = "registry"
LINEAGE_TAGS = ("data_hash", "git_commit", "git_dirty", "dvc_exp_name")
LINEAGE_PREFIXES = ("dvc.dep.", "dvc.out.")
FIGURES = ("accuracy", "accuracy_delta_pp", "val_accuracy", "gzip_bytes", "latency_ratio", "latency_median_ms")
# What the alias compares, per objective (lower is better): the selection rule's own ranking.
COSTS = OBJECTIVES
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,254}$")


@dataclass
class Registration:
    name: str
    version: str
    alias: str
    alias_moved: bool
    why: str
    file: str
    servable: bool   # a pyfunc model (a classifier), or a folder holding the file (a detector)

    def how_to_load(self) -> str:
        uri = f"models:/{self.name}@{self.alias}"
        return (f'mlflow.pyfunc.load_model("{uri}").predict(images), or `mlflow models serve -m {uri} '
                f'--env-manager local`' if self.servable else f'mlflow.artifacts.download_artifacts("{uri}")')


def check_name(name: str, alias: str = DEFAULT_ALIAS) -> None:
    """Reject a model or alias name MLflow would refuse, before any expensive work."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"--register {name!r}: a model name is letters, digits, '_', '-', '.' and spaces, "
                        f"starting with a letter or digit (e.g. firenet-edge)")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,254}", alias or "") or alias.lower() == "latest" \
            or re.fullmatch(r"v\d+", alias):
        raise UserError(f"--alias {alias!r}: an alias is letters, digits, '_' and '-', not 'latest' and not v<N> "
                        f"(e.g. champion)")


def register(name: str, *, run_id: str, variant: str, mode: str, figures: Mapping, rule: Mapping[str, object],
             objective: str = "size", alias: str = DEFAULT_ALIAS, uri: str | None = None) -> Registration:
    """Register `<variant>-<mode>.tflite` of summary run `run_id` as a new version of `name`.

    Args:
      figures: the file's figures (FIGURES keys; missing ones are left out).
      rule: the selection rule, tagged as `selection.<key>`.
      objective: 'size' or 'latency': what a better choice minimises (moves the alias).
    """
    # Imported here: `compresslab search` checks a name through this module long before it registers.
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from compresslab.tracking import mlflow_log

    check_name(name, alias)
    uri = uri or mlflow_log.tracking_uri()
    client = MlflowClient(uri, registry_uri=uri)   # the registry of the same store, whatever the defaults
    run = client.get_run(run_id)
    label = variants.label(variant, mode)
    servable = run.data.tags.get("task", "classification") == "classification"
    with tempfile.TemporaryDirectory() as scratch:
        local, md5 = _fetch_file(client, run, variant, label, Path(scratch))
        if servable:
            model = _logged_model(client, uri, run, label, local)
            source, model_id = model.artifact_location, model.model_id
        else:
            source, model_id = _log_folder(client, run, label, local), None
    tags = {**_lineage(run.data.tags), **{f"param.{k}": v for k, v in run.data.params.items()},
            **{f"selection.{k}": str(v) for k, v in rule.items()}, "selection.objective": objective,
            "file": f"{label}.tflite", "file_md5": md5,
            **{key: str(figures[key]) for key in FIGURES if figures.get(key) is not None}}
    try:
        client.create_registered_model(name, description="TFLite files chosen by compresslab (compare or search "
                                                         "--register); each version's tags say why and from what")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags, model_id=model_id,
                                          description=f"{label}.tflite from experiment {_experiment(run)}")
    moved, why = _move_alias(client, name, alias, version.version, tags, objective)
    return Registration(name, str(version.version), alias, moved, why, f"{label}.tflite", servable)


def _fetch_file(client, run, variant: str, label: str, scratch: Path) -> tuple[Path, str]:
    """The run's `<label>.tflite`, downloaded into `scratch`, and its md5."""
    from mlflow.exceptions import MlflowException

    try:
        local = Path(client.download_artifacts(run.info.run_id, f"tflite/{variant}/{label}.tflite", str(scratch)))
    except (MlflowException, OSError):
        raise UserError(f"run {run.info.run_id} holds no tflite/{variant}/{label}.tflite artifact: was its "
                        f"report stage run by an older pipeline? Re-run the experiment") from None
    return local, hashlib.md5(local.read_bytes()).hexdigest()


def _log_folder(client, run, label: str, local: Path) -> str:
    """The URI of the run's registry/<label>/ folder holding only the file (logged once)."""
    folder = f"{ARTIFACT_DIR}/{label}"
    if not client.list_artifacts(run.info.run_id, folder):
        client.log_artifact(run.info.run_id, str(local), artifact_path=folder)
    return f"{run.info.artifact_uri}/{folder}"


def _logged_model(client, uri: str, run, label: str, local: Path):
    """The run's model of `label` (tracking/file_models.py): the one its report stage logged, else logged now
    (a run whose report logged no models), with three of the workspace's test images as its example when they
    have the run's input shape."""
    from compresslab.tracking import file_models  # noqa: PLC0415  (imports MLflow's model flavours)

    model = file_models.found_model(client, run, label)
    if model is None:
        class_names = run.data.tags.get("class_names")
        if class_names is None:
            raise UserError(f"run {run.info.run_id} does not name its classes (tag class_names): its report "
                            f"stage was run by an older pipeline; re-run the experiment to register a servable "
                            f"model")
        size, channels = int(run.data.params["data.image_size"]), int(run.data.params["data.channels"])
        served = file_models.Served(json.loads(class_names), size, channels, _example((size, size, channels)))
        model_id = file_models.log_models(uri, run.info.run_id, [file_models.FileModel(label, local)], served)[label]
        model = client.get_logged_model(model_id)
    return model


def _example(shape: tuple) -> np.ndarray | None:
    """Three test images of the workspace's prepared data, when they have `shape`."""
    from compresslab.data import shards  # noqa: PLC0415

    try:
        test = shards.open_split("test")
        images = test.take(range(min(3, shards.count(test))))
    except (UserError, OSError, KeyError):
        return None
    return images if images.shape[1:] == tuple(shape) else None


def _lineage(tags: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in tags.items() if key in LINEAGE_TAGS or key.startswith(LINEAGE_PREFIXES)}


def _experiment(run) -> str:
    return run.data.tags.get("dvc_exp_name") or "workspace"


def _move_alias(client, name: str, alias: str, version: str, tags: Mapping[str, str],
                objective: str) -> tuple[bool, str]:
    from mlflow.exceptions import MlflowException

    cost = COSTS[objective]
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    if current is not None:
        mine, theirs = _number(tags.get(cost)), _number(current.tags.get(cost))
        same_objective = current.tags.get("selection.objective") == objective
        if same_objective and mine is not None and theirs is not None and theirs < mine:
            return False, (f"{alias} stays on version {current.version}: its {cost} {theirs:g} beats this "
                           f"version's {mine:g}")
    client.set_registered_model_alias(name, alias, version)
    if current is None:
        return True, f"{alias} now names version {version} (the first with this alias)"
    return True, f"{alias} moved from version {current.version} to version {version}"


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
