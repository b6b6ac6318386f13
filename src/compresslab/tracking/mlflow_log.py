"""MLflow tracking: where runs go, how one pipeline execution's runs hang together, and writing a run in one
retried step.

Where: `MLFLOW_TRACKING_URI` when set, else `sqlite:///<root>/mlflow.db`, with artifacts under
`<root>/mlartifacts`. `<root>` is `DVC_ROOT` when set (queued experiments run in a temporary copy under
`.dvc/tmp/exps/` that is deleted afterwards; DVC_ROOT names the real repository), else the working directory,
which DVC sets to the project root for every stage.

Structure, as MLflow's UI expects it: the `compresslab` experiment is tagged as a model-training experiment
(else the UI opens on its GenAI view). Every pipeline execution (a `dvc repro`, a `dvc exp run`, one queued
experiment) gets one parent run, named after the DVC experiment; each stage that runs logs a child run under
it (`mlflow.parentRunId`), stages DVC skips log nothing. The stages run as separate processes, so they find
their parent by the execution they belong to: the `dvc` process that started them (its pid and start time),
kept in the tag `compresslab.execution`. The `report` stage, which closes every execution, writes the summary
into the parent (every figure, the whole configuration, the report as its description, the files) and ends it.
A run's start is its process's start, its end the moment it is logged: MLflow's Duration is the stage's time.

How: everything a run holds is gathered first and written at the end. SQLite lets one writer in at a time, and
two queue workers that open a new mlflow.db at once both try to create its tables (alembic then fails
outright). So writes to a SQLite store are serialised across processes by a lock file beside the database;
should a reader (the MLflow UI) still cause "database is locked", the write is tried again. No run is lost.

Lineage (`compresslab.tracking.lineage`): every run is tagged with the md5 of the data and model files its stage read
and wrote (`dvc.dep.<path>`, `dvc.out.<path>`, the values dvc.lock holds once the stage has finished), and
carries the data set that data.dvc tracks as an MLflow dataset input (digest = its DVC md5).
"""

import contextlib
import os
import random
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
import psutil
from filelock import FileLock
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE, MLFLOW_SOURCE_NAME,
                                      MLFLOW_SOURCE_TYPE)
from mlflow.utils.validation import (MAX_ENTITIES_PER_BATCH, MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH,
                                     MAX_TAG_VAL_LENGTH)

from compresslab.tracking import lineage
from compresslab.config import flatten

EXPERIMENT = "compresslab"
# MLflow 3 opens an experiment on its GenAI view unless told that it holds model-training runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
EXECUTION_TAG = "compresslab.execution"
PIPELINE = "pipeline"  # the `stage` tag of a parent run
ATTEMPTS = 8
DATA_DVC = "data.dvc"  # what `dvc add data/raw` writes: the raw data set and its md5


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def write_lock(uri: str) -> FileLock | contextlib.nullcontext:
    """A cross-process lock for a SQLite store (a server serialises writes itself)."""
    if uri.startswith("sqlite:///"):
        return FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=600)
    return contextlib.nullcontext()


def experiment_id(client: MlflowClient) -> str:
    """The id of the `compresslab` experiment (or $MLFLOW_EXPERIMENT_NAME), created with a fixed artifact root
    and tagged as a model-training experiment (an experiment created by an older version gets the tag too)."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    found = client.get_experiment_by_name(name)
    if found is None:
        # A local store fixes the artifact location at creation: anchor it on the project root, not the cwd.
        location = None if tracking_uri().startswith("http") else (project_root() / "mlartifacts").as_uri()
        try:
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException:  # another worker created it in the meantime
            found = client.get_experiment_by_name(name)
    for key, value in EXPERIMENT_KIND.items():
        if found.tags.get(key) != value:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def execution() -> tuple[str, int]:
    """(id, start time in ms) of the pipeline execution this process belongs to: the nearest `dvc` process
    above it (`dvc repro`, `dvc exp run`, a queue worker's `dvc exp exec-run`), else this process alone."""
    process = psutil.Process()
    for candidate in [process, *process.parents()]:
        try:
            argv = candidate.cmdline()
        except psutil.Error:
            continue
        if any(Path(arg).name == "dvc" for arg in argv[:2]) or argv[1:3] == ["-m", "dvc"]:
            process = candidate
            break
    return f"{process.pid}-{int(process.create_time())}", int(process.create_time() * 1000)


def source_tags(stage: str, git_commit: str | None) -> dict[str, str]:
    """What MLflow shows as a run's Source: the stage script, and the git commit it ran from."""
    script = "dvc.yaml" if stage == PIPELINE else f"stages/{stage.split('@')[0]}.py"
    tags = {MLFLOW_SOURCE_NAME: script, MLFLOW_SOURCE_TYPE: "LOCAL"}
    if git_commit and git_commit != "unknown":
        tags[MLFLOW_GIT_COMMIT] = git_commit
    return tags


def lineage_tags(stage: str) -> dict[str, str]:
    """Tags that tie a run to its inputs: stage, git commit and dirtiness, DVC experiment, data hash, and the
    md5 of each data/model file the stage reads and writes (`dvc.dep.<path>`, `dvc.out.<path>`)."""
    tags = {"stage": stage, "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace")}
    git = ["git", "-C", os.getcwd()]
    try:
        tags["git_commit"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                                            check=True).stdout.strip()
        # Dirty means the code or conf differs from the commit; what the pipeline itself rewrites (dvc.lock,
        # params.yaml on `dvc exp run`, the metrics under reports/) does not count.
        status = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no", "--", ".",
                                       ":!dvc.lock", ":!params.yaml", ":!reports"],
                                capture_output=True, text=True, check=True).stdout
        tags["git_dirty"] = str(bool(status.strip())).lower()
    except (OSError, subprocess.CalledProcessError):
        tags["git_commit"] = "unknown"
    data_hash = read_data_hash()
    if data_hash:
        tags["data_hash"] = data_hash
    # DVC runs every stage in the folder of dvc.yaml (a queued experiment: in its temporary copy).
    tags.update(lineage.stage_hashes(stage, os.getcwd()))
    return tags


def read_data_hash(dvc_file: str | Path = DATA_DVC) -> str | None:
    """The md5 that `data.dvc` records for data/raw (what DVC will check the data against)."""
    return next(iter(lineage.dvc_file_outs(Path("."), dvc_file).values()), None)


def log_run(stage: str, *, params: Mapping, metrics: Mapping[str, float],
            history: Mapping[str, list[float]] | None = None, tags: Mapping[str, str] | None = None,
            artifacts: Iterable[str | Path] = (), run_name: str | None = None) -> str:
    """Log one finished stage as a child run of its pipeline execution's parent run; returns its id.

    Args:
      stage: the DVC stage that ran (a tag, and the run name unless run_name is given).
      params: nested config; logged flattened to dotted keys.
      metrics: final figures; None values are left out.
      history: per-epoch curves, logged as metrics with step = epoch index.
      tags: extra tags on top of the lineage and source tags.
      artifacts: files and folders to attach.
    """
    return write(stage, params=params, metrics=metrics, history=history, tags=tags, artifacts=artifacts,
                 run_name=run_name, summary=False)


def log_summary(*, params: Mapping, metrics: Mapping[str, float], description: str, tags: Mapping[str, str],
                artifacts: Iterable[str | Path]) -> str:
    """Write the summary of a pipeline execution into its parent run and end it; returns the parent's id.

    Args:
      params: the whole configuration (logged flattened: `prune.final_sparsity`).
      metrics: every figure of every file, `<variant>.<mode>.<figure>`.
      description: markdown shown on the run's page (the report).
      tags: extra tags (the summary is tagged `summary=true` and with the report stage's lineage).
      artifacts: files and folders to attach.
    """
    return write("report", params=params, metrics=metrics, history=None, artifacts=artifacts, run_name=None,
                 tags={**tags, "stage": PIPELINE, "summary": "true", MLFLOW_RUN_NOTE: fit_description(description)},
                 summary=True)


def fit_description(text: str, limit: int = MAX_TAG_VAL_LENGTH) -> str:
    """`text` whole when MLflow can hold it as a run description, else its first sections that fit, cut at a
    section heading, with a pointer to the full report (MLflow silently truncates a tag past `limit`)."""
    if len(text) <= limit:
        return text
    pointer = "\n\n*The full report is the run's artifact `report.md`.*\n"
    cut = text.rfind("\n## ", 0, limit - len(pointer))
    return text[:cut if cut > 0 else limit - len(pointer)].rstrip() + pointer


def write(stage: str, *, params, metrics, history, tags, artifacts, run_name, summary: bool) -> str:
    """Gather a run's contents, then write them under the store's lock, retried while the store is busy."""
    uri = tracking_uri()
    inputs = lineage_tags(stage)
    all_tags = {**inputs, **source_tags(stage, inputs.get("git_commit")), **(tags or {})}
    data_input = lineage.dataset_input(DATA_DVC, project_root(), context=stage)
    flat_params = [Param(k, str(v)) for k, v in flatten(params).items()]
    now = int(time.time() * 1000)
    flat_metrics = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None]
    for key, values in (history or {}).items():
        flat_metrics += [Metric(key, float(v), now, step) for step, v in enumerate(values)]
    contents = Contents(all_tags, flat_params, flat_metrics, list(map(Path, artifacts)),
                        [data_input] if data_input else [])
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with write_lock(uri):
                client = MlflowClient(uri)
                parent = parent_run(client, inputs["dvc_exp_name"])
                if summary:
                    run_id = fill(client, parent, contents)
                else:
                    run_id = new_child(client, parent, stage, run_name, contents)
            print(f"mlflow: logged {'summary into' if summary else 'run'} {run_id} "
                  f"({run_name or stage}) to {uri}")
            if summary:  # MLflow 3.17's UI opens on its GenAI view unless the link asks for model training
                print(f"mlflow: in `mlflow ui`, open #/experiments/{experiment_id(MlflowClient(uri))}/runs/"
                      f"{run_id}?workflowType=machine_learning")
            return run_id
        except Exception as err:  # noqa: BLE001 - only "locked" is retried, the rest re-raised
            if "locked" not in str(err).lower() or attempt == ATTEMPTS:
                raise
            time.sleep(random.uniform(0.5, 2.0) * attempt)
            print(f"mlflow: store busy ({err.__class__.__name__}), retry {attempt}/{ATTEMPTS - 1}")
    raise AssertionError("unreachable")


@dataclass
class Contents:
    """Everything one run holds, gathered before the store is touched."""
    tags: dict[str, str]
    params: list[Param]
    metrics: list[Metric]
    artifacts: list[Path]
    datasets: list


def parent_run(client: MlflowClient, experiment: str) -> str:
    """The id of this execution's parent run, created (started when the execution started) if none yet."""
    execution_id, started = execution()
    exp_id = experiment_id(client)
    found = client.search_runs([exp_id], f"tags.`{EXECUTION_TAG}` = '{execution_id}' and tags.stage = '{PIPELINE}'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=experiment, start_time=started,
                            tags={EXECUTION_TAG: execution_id, "stage": PIPELINE, "dvc_exp_name": experiment,
                                  **source_tags(PIPELINE, None)})
    return run.info.run_id


def new_child(client: MlflowClient, parent: str, stage: str, run_name: str | None, contents: Contents) -> str:
    """Create a finished child run that spans this stage process's life; a failed write leaves no half run."""
    started = int(psutil.Process().create_time() * 1000)
    run = client.create_run(experiment_id(client), run_name=run_name or stage, start_time=started,
                            tags={MLFLOW_PARENT_RUN_ID: parent, "stage": stage})
    try:
        fill(client, run.info.run_id, contents)
    except Exception:
        with contextlib.suppress(Exception):  # the store may still be busy: the run stays unfinished
            client.delete_run(run.info.run_id)
        raise
    return run.info.run_id


def log_inputs(client: MlflowClient, run_id: str, datasets: list, attempts: int = 3) -> None:
    """Link the datasets to the run, retried when another run created the same dataset at the same moment.

    An MLflow server creates a dataset the first time a run names it, without a lock: two runs logging the same
    new dataset at once (the queue workers of two clones sharing one server) make one of them fail on the
    datasets table's unique key. The dataset exists by then, so the next try only links it.
    """
    for attempt in range(1, attempts + 1):
        try:
            client.log_inputs(run_id, datasets=datasets)
            return
        except mlflow.exceptions.MlflowException as err:
            message = str(err).lower()
            if "datasets" not in message or not ("unique" in message or "duplicate" in message) \
                    or attempt == attempts:
                raise
            time.sleep(random.uniform(0.1, 0.5) * attempt)


def batches(params: list, metrics: list, tags: list) -> Iterable[tuple[list, list, list]]:
    """(params, metrics, tags) in as few `log_batch` calls as MLflow accepts (100 params, 100 tags, 1000 metrics,
    1000 in all): each call is a transaction, an fsync of the SQLite store (the summary's 900 metrics took ten
    calls of 100, 2.2 s, where two do)."""
    while params or metrics or tags:
        p, t = params[:MAX_PARAMS_TAGS_PER_BATCH], tags[:MAX_PARAMS_TAGS_PER_BATCH]
        m = metrics[:min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(p) - len(t))]
        yield p, m, t
        params, metrics, tags = params[len(p):], metrics[len(m):], tags[len(t):]


def fill(client: MlflowClient, run_id: str, contents: Contents) -> str:
    """Write tags, params, metrics, datasets and artifacts into a run, then end it now."""
    tags = [RunTag(key, str(value)) for key, value in contents.tags.items()]
    for params, metrics, batch_tags in batches(contents.params, contents.metrics, tags):
        client.log_batch(run_id, metrics=metrics, params=params, tags=batch_tags)
    if contents.datasets:
        log_inputs(client, run_id, contents.datasets)
    for path in contents.artifacts:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        elif path.exists():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=int(time.time() * 1000))
    return run_id
