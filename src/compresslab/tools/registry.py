"""The MLflow Model Registry: the chosen `.tflite` file as a new version of a registered model.

    compresslab compare --max-drop 1 --register firenet        # the smallest file within 1 pp
    compresslab search prune.final_sparsity --max-drop 1 --register firenet
    mlflow.pyfunc.load_model("models:/firenet@champion").predict(images)   # anywhere the server is reachable

The version is the MLflow model the report stage logged for the file into its summary run (named by its label;
tracking/file_models.py: LiteRT, no TensorFlow), so `mlflow.pyfunc.load_model("models:/NAME@ALIAS")` predicts
(a classifier's classes, a detector's boxes), `mlflow models serve -m models:/NAME@ALIAS --env-manager local`
answers, and the file itself is its artifact `artifacts/<label>.tflite`, byte for byte. The version carries the
run's lineage (data hash, git commit, DVC experiment, the dvc.lock hashes the report stage read), the file's
md5 and figures, the experiment's params (`param.<key>`) and the selection rule (`selection.*`) as tags.

The alias (`champion` by default) moves to the new version unless the version it names is better by the same
objective (smaller gzipped size, or a lower latency ratio); either way the command says which and why.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass

from compresslab import variants
from compresslab.errors import UserError
from compresslab.results.selection import OBJECTIVES

DEFAULT_ALIAS = "champion"
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
    file_md5: str

    def how_to_load(self) -> str:
        uri = f"models:/{self.name}@{self.alias}"
        return (f'mlflow.pyfunc.load_model("{uri}").predict(images), or `mlflow models serve -m {uri} '
                f'--env-manager local`')


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
    model = _logged_model(client, run, label)
    tags = {**_lineage(run.data.tags), **{f"param.{k}": v for k, v in run.data.params.items()},
            **{f"selection.{k}": str(v) for k, v in rule.items()}, "selection.objective": objective,
            "file": f"{label}.tflite", "file_md5": model.tags["file_md5"],
            **{key: str(figures[key]) for key in FIGURES if figures.get(key) is not None}}
    try:
        client.create_registered_model(name, description="TFLite files chosen by compresslab (compare or search "
                                                         "--register); each version's tags say why and from what")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=model.artifact_location, run_id=run_id, tags=tags,
                                          model_id=model.model_id,
                                          description=f"{label}.tflite from experiment {_experiment(run)}")
    moved, why = _move_alias(client, name, alias, version.version, tags, objective)
    return Registration(name, str(version.version), alias, moved, why, f"{label}.tflite", tags["file_md5"])


def _logged_model(client, run, label: str):
    """The model of `label` the run's report stage logged (tracking/file_models.py)."""
    from compresslab.tracking import file_models  # noqa: PLC0415  (imports MLflow's model flavours)

    model = file_models.found_model(client, run, label)
    if model is None:
        raise UserError(f"run {run.info.run_id} logged no model of {label}.tflite: its report stage was run by an "
                        f"older pipeline; re-run the experiment to register it")
    return model


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
