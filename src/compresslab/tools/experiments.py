"""What DVC recorded of experiments: an experiment's reports/metrics.json as `dvc exp show` lists it, and the
hash HEAD's dvc.lock records for the committed reports/metrics.json (which finds the MLflow summary run of a
probe that re-ran nothing)."""

import json
import subprocess
import time

import yaml

from compresslab import paths
from compresslab.errors import UserError
from compresslab.tools.dvc_command import run_dvc


# `dvc exp show` while a queue worker runs another experiment can catch that experiment's temporary folder as
# it is removed ("directory '.dvc/tmp/exps/tmp.../.dvc' does not exist", DVC 3.67): asked again, it answers.
SHOW_ATTEMPTS = 4
SHOW_RETRY_SECONDS = 2.0


def experiment_metrics(name: str) -> dict:
    """{variant: {mode: {figure: value}}}: reports/metrics.json of DVC experiment `name`."""
    for attempt in range(1, SHOW_ATTEMPTS + 1):
        try:
            shown = json.loads(run_dvc("exp", "show", "--json").stdout)
            break
        except UserError as err:
            if "does not exist" not in str(err) or attempt == SHOW_ATTEMPTS:
                raise
            time.sleep(SHOW_RETRY_SECONDS)
    for revision in shown:
        for experiment in revision.get("experiments") or []:
            if experiment.get("name") == name:
                data = experiment["revs"][0].get("data") or {}
                return ((data.get("metrics") or {}).get("reports/metrics.json") or {}).get("data") or {}
    raise UserError(f"`dvc exp show` lists no experiment {name}: was it removed while the search ran?")


def committed_metrics_md5() -> str | None:
    """The md5 of reports/metrics.json in HEAD's dvc.lock (the report stage's output); None without one."""
    shown = subprocess.run(["git", "show", "HEAD:dvc.lock"], capture_output=True, text=True)
    if shown.returncode != 0:
        return None
    report = ((yaml.safe_load(shown.stdout) or {}).get("stages") or {}).get("report") or {}
    return next((out.get("md5") for out in report.get("outs") or []
                 if out.get("path") == f"{paths.REPORTS}/metrics.json"), None)
