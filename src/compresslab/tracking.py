"""MLflow tracking: where runs go, and logging one run in one retried step.

Where: `MLFLOW_TRACKING_URI` when set, else `sqlite:///<root>/mlflow.db`, with artifacts under
`<root>/mlartifacts`. `<root>` is `DVC_ROOT` when set (queued experiments run in a temporary copy under
`.dvc/tmp/exps/` that is deleted afterwards; DVC_ROOT names the real repository), else the working directory,
which DVC sets to the project root for every stage.

How: everything a run holds is gathered first and written at the end by `log_run`. SQLite lets one writer in
at a time, and two queue workers that open a new mlflow.db at once both try to create its tables (alembic then
fails outright). So writes to a SQLite store are serialised across processes by a lock file beside the
database; should a reader (the MLflow UI) still cause "database is locked", the partial run is deleted and the
write tried again. No run is lost and none is half-written.

Lineage (`compresslab.lineage`): every run is tagged with the md5 of the data and model files its stage read
and wrote (`dvc.dep.<path>`, `dvc.out.<path>`, the values dvc.lock holds once the stage has finished), and
carries the data set that data.dvc tracks as an MLflow dataset input (digest = its DVC md5).
"""

import contextlib
import os
import random
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from filelock import FileLock
from mlflow.tracking import MlflowClient

from compresslab import lineage
from compresslab.config import flatten

EXPERIMENT = "compresslab"
ATTEMPTS = 8
BATCH = 100  # MLflow's log_batch takes at most 100 params (and 1000 metrics) per call
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
    """The id of the `compresslab` experiment (or $MLFLOW_EXPERIMENT_NAME), created with a fixed artifact root."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    # A local store fixes the artifact location at creation: anchor it on the project root, not the cwd.
    location = None if tracking_uri().startswith("http") else (project_root() / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # another worker created it in the meantime
        return client.get_experiment_by_name(name).experiment_id


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
    """Log one finished run; returns its id.

    Args:
      stage: the DVC stage that ran (a tag, and the run name unless run_name is given).
      params: nested config; logged flattened to dotted keys.
      metrics: final figures; None values are left out.
      history: per-epoch curves, logged as metrics with step = epoch index.
      tags: extra tags on top of the lineage tags.
      artifacts: files to attach.
    """
    uri = tracking_uri()
    all_tags = {**lineage_tags(stage), **(tags or {})}
    data_input = lineage.dataset_input(DATA_DVC, project_root(), context=stage)
    flat_params = [Param(k, str(v)) for k, v in flatten(params).items()]
    now = int(time.time() * 1000)
    flat_metrics = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None]
    for key, values in (history or {}).items():
        flat_metrics += [Metric(key, float(v), now, step) for step, v in enumerate(values)]
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with write_lock(uri):
                run_id = write_run(uri, stage, run_name, all_tags, flat_params, flat_metrics, artifacts,
                                   datasets=[data_input] if data_input else [])
            print(f"mlflow: logged run {run_id} ({run_name or stage}) to {uri}")
            return run_id
        except Exception as err:  # noqa: BLE001 - only "locked" is retried, the rest re-raised
            if "locked" not in str(err).lower() or attempt == ATTEMPTS:
                raise
            time.sleep(random.uniform(0.5, 2.0) * attempt)
            print(f"mlflow: store busy ({err.__class__.__name__}), retry {attempt}/{ATTEMPTS - 1}")
    raise AssertionError("unreachable")


def write_run(uri, stage, run_name, tags, params, metrics, artifacts, datasets=()) -> str:
    """Create one run and write everything into it (datasets: MLflow DatasetInputs); on failure, delete the
    partial run and re-raise."""
    client = MlflowClient(uri)
    run_id = None
    try:
        run = client.create_run(experiment_id(client), run_name=run_name or stage,
                                tags={k: str(v) for k, v in tags.items()})
        run_id = run.info.run_id
        for start in range(0, max(len(params), len(metrics)), BATCH):
            client.log_batch(run_id, metrics=metrics[start:start + BATCH], params=params[start:start + BATCH])
        if datasets:
            client.log_inputs(run_id, datasets=list(datasets))
        for path in map(Path, artifacts):
            if path.is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=path.name)
            elif path.exists():
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id)
        return run_id
    except Exception:
        if run_id:
            with contextlib.suppress(Exception):  # the store may still be busy: the run stays unfinished
                client.delete_run(run_id)
        raise
