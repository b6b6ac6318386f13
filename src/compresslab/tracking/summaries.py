"""The MLflow "summary" runs: one per pipeline execution, logged by the `report` stage (tag summary=true, the
whole configuration as dotted params, every figure as `<variant>.<mode>.<figure>` metrics).

`compare` and `search` read them; both need the same filter and the same store lookup, so they live here, beside
the code that logs them (`mlflow_log`), rather than inside either command.
"""

import os
from collections.abc import Sequence
from pathlib import Path

from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from compresslab.errors import UserError
from compresslab.tracking import mlflow_log

_SEARCH_PAGE = 1000
SUMMARY_FILTER = "tags.summary = 'true' and attributes.status = 'FINISHED'"


def summary_runs(experiments: Sequence[str] | None = None, *, uri: str | None = None) -> list[Run]:
    """The newest finished summary run of each DVC experiment name, newest first.

    Args:
      experiments: names to keep (None: all); every name must have a run.
      uri: the tracking URI; `mlflow_log.tracking_uri()` when None.

    Returns:
      MLflow Run objects.
    """
    uri = uri or mlflow_log.tracking_uri()
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", mlflow_log.EXPERIMENT)
    no_runs = UserError(f"no summary runs in MLflow experiment '{name}' at {uri}: run `dvc repro` or "
                        f"`dvc exp run` first (the report stage logs one per pipeline run)")
    store = summary_store(uri)
    if store is None:
        raise no_runs
    newest: dict[str, Run] = {}
    for run in sorted(_search_all(*store), key=_started, reverse=True):
        newest.setdefault(experiment_name(run), run)
    if not newest:
        raise no_runs
    if experiments:
        missing = [wanted for wanted in dict.fromkeys(experiments) if wanted not in newest]
        if missing:
            raise UserError(f"no summary run for experiment(s) {', '.join(missing)}: runs exist for "
                            f"{', '.join(newest)} (names as `dvc exp show` lists them; 'workspace' for "
                            f"`dvc repro`)")
        return [run for exp, run in newest.items() if exp in experiments]
    return list(newest.values())


def summary_store(uri: str | None = None) -> tuple[MlflowClient, str] | None:
    """(client, experiment id) where the summary runs live; None when nothing has been logged there yet."""
    uri = uri or mlflow_log.tracking_uri()
    # Opening a SQLite URI creates the database: a missing file simply means nothing ran here yet.
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", mlflow_log.EXPERIMENT))
    return None if found is None else (client, found.experiment_id)


def _search_all(client: MlflowClient, experiment_id: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], SUMMARY_FILTER,
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=_SEARCH_PAGE,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _started(run: Run) -> tuple[int, int]:
    return run.info.start_time or 0, run.info.end_time or 0


def experiment_name(run: Run) -> str:
    """The DVC experiment a run belongs to ('workspace' for `dvc repro`)."""
    return run.data.tags.get("dvc_exp_name") or "workspace"


def varying_params(runs: Sequence[Run]) -> list[str]:
    """The dotted params whose value differs between the runs (missing counts as a value), sorted."""
    keys = sorted({key for run in runs for key in run.data.params})
    return [key for key in keys if len({run.data.params.get(key) for run in runs}) > 1]



def timed_on(runs: Sequence[Run], device: str) -> tuple[list[Run], list[str]]:
    """The runs as if timed on `device` (its figures in place of this machine's: `results.summary.on_device`),
    and the experiments left out because they timed nothing on it.

    Raises:
      UserError: no run timed anything on `device`; the message names the devices that runs did time on.
    """
    from mlflow.entities import Metric, Param, RunData, RunTag

    from compresslab.results.summary import on_device

    kept, left_out = [], []
    for run in runs:
        metrics = on_device(run.data.metrics, device)
        if metrics is None:
            left_out.append(experiment_name(run))
            continue
        data = RunData(metrics=[Metric(key, value, 0, 0) for key, value in metrics.items()],
                       params=[Param(key, value) for key, value in run.data.params.items()],
                       tags=[RunTag(key, value) for key, value in run.data.tags.items()])
        kept.append(Run(run.info, data))
    if not kept:
        known = sorted({key.split(".")[1] for run in runs for key in run.data.tags if key.startswith("device.")})
        raise UserError(f"no summary run timed its files on device {device!r}"
                        + (f" (runs timed on: {', '.join(known)})" if known else "")
                        + ": run `dvc exp run -S 'evaluate.devices=[{name: " + device + ", host: ...}]'` first")
    return kept, left_out
