"""The comparison table: every summary run's files as rows, seed groups averaged into one row per file, and the
Pareto flags over all of them.

Runs that repeat another's params *and* seed on the same data are left out (`drop_repeats`): a repeat is not
another sample. Runs whose params are identical except `seed` form a seed group (`seed_groups`);
`build_group_table` averages each group's per-run rows (`build_table`) with the spread over seeds.

Pure MLflow entities and pandas: no TensorFlow, no matplotlib.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Run

from compresslab import variants
from compresslab.outputs import write_text
from compresslab.reporting import statistics
from compresslab.reporting.metrics import pareto_front
from compresslab.reporting.rows import sort_rows
from compresslab.results import selection as rule
from compresslab.results.record import Record, by_file, thread_counts
from compresslab.results.summary import records_from_summary
from compresslab.results.task import CLASSIFICATION, Task, task_of
from compresslab.errors import UserError
from compresslab.tracking.summaries import experiment_name

FIGURE_COLUMNS = ("variant", "mode", "figure", "accuracy", "accuracy_delta_pp", "gzip_bytes", "gzip_ratio",
                  "latency_median_ms", "latency_threads", "latency_ratio", "pareto_size", "pareto_latency")
# Carried from the report stage's scoring (Wilson interval, exact McNemar vs baseline-float32, change vs the
# float control of the same mode); runs logged before it have none: empty cells.
SCORING_COLUMNS = ("accuracy_ci_low", "accuracy_ci_high", "p_value", "significant", "accuracy_delta_control_pp")
# What the selection rule decides on (`results.selection`): each run's reference (its float control, else its
# baseline-float32), the split (validation, else test), the file's and the reference's figures and the drops
# on the decision split and on the held-out test split. Present when some run has a control or validation
# figures; for older runs the rule reads what accuracy_delta_pp already says (baseline-float32, test split).
RULE_COLUMNS = ("reference", "split", "val_accuracy", "reference_val_accuracy", "reference_accuracy", "drop_pp",
                "test_drop_pp")
LEGACY_REFERENCE, LEGACY_SPLIT = variants.BASELINE_FILE, "test"
# A seed group's row: how many runs it averages and how far they spread (empty for a single run).
GROUP_COLUMNS = ("seeds", "accuracy_std", "accuracy_seed_ci_low", "accuracy_seed_ci_high", "accuracy_delta_pp_std")
# Averaged over a group's seeds; the fronts and the choice are taken on these means.
MEAN_COLUMNS = ("accuracy", "accuracy_delta_pp", "accuracy_delta_control_pp", "gzip_bytes", "gzip_ratio",
                "latency_median_ms", "latency_ratio", "val_accuracy", "reference_val_accuracy", "reference_accuracy",
                "drop_pp", "test_drop_pp")
# Figures of one run's test split (its Wilson interval, its McNemar test): a mean of them means nothing, so a
# group of several runs leaves them empty; compare_runs.csv has them per run, the seed interval replaces them.
PER_RUN_COLUMNS = ("accuracy_ci_low", "accuracy_ci_high", "p_value", "significant")
SEED = "seed"
GROUP_JOIN = "+"   # a group is named by its experiments: exp-a+exp-b+exp-c
# Latency compares across runs only as a ratio timed within each run (each file against its own run's
# baseline-float32, interleaved): milliseconds drift 2x between runs and differ between machines.
LATENCY_RATIO = rule.OBJECTIVES["latency"]


# ------------------------------------------------------------------------------------------ seed groups

def drop_repeats(runs: Sequence[Run]) -> tuple[list[Run], dict[str, list[str]]]:
    """Keep the newest run of each configuration *and* seed on the same data; the others are repeats.

    A repeat (the same params and seed again, e.g. two searches probing one setting) is not another sample:
    counted as a seed it would add a spread of zero. Returns the runs kept (order kept) and, per kept
    experiment, the names of the repeats it stands for.
    """
    kept: dict[tuple, Run] = {}
    repeats: dict[str, list[str]] = {}
    for run in runs:   # newest first: the first of each key is kept
        key = (tuple(sorted(run.data.params.items())), run.data.tags.get("data_hash"))
        if key in kept:
            repeats.setdefault(experiment_name(kept[key]), []).append(experiment_name(run))
        else:
            kept[key] = run
    return list(kept.values()), repeats



def seed_groups(runs: Sequence[Run]) -> list[list[Run]]:
    """The runs grouped by configuration: identical params except `seed`, on the same data.

    A run alone is a group of one. Groups come in the order of their first run in `runs` (newest first);
    within a group, runs go by seed.
    """
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        # data_hash too: the same params on other data is another experiment, not another seed.
        key = (tuple(sorted((k, v) for k, v in run.data.params.items() if k != SEED)),
               run.data.tags.get("data_hash"))
        groups.setdefault(key, []).append(run)
    return [sorted(group, key=_seed_order) for group in groups.values()]


def _seed_order(run: Run) -> tuple:
    # Numeric seeds by value (2 before 10), other text after them, a missing seed last.
    seed = run.data.params.get(SEED)
    try:
        return 0, float(seed), "", experiment_name(run)
    except (TypeError, ValueError):
        return 1 if seed is not None else 2, 0.0, str(seed or ""), experiment_name(run)


# ---------------------------------------------------------------------------------------------- table

def build_table(runs: Sequence[Run], varying: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (experiment, variant, mode) with the figures that decide a trade-off.

    Columns: experiment, run_id, the `varying` params (as logged, text), variant, mode, figure (the run's
    primary figure, results/task.py: `accuracy`, or `map` for a detection run, whose mAP figures then fill the
    accuracy columns), accuracy (fraction),
    accuracy_delta_pp (vs. the run's own baseline-float32), gzip_bytes, gzip_ratio (vs. the same),
    latency_median_ms at `latency_threads` (the lowest thread count every run measured; each run's lowest
    when they share none), and pareto_size / pareto_latency: on the front of (gzip_bytes, accuracy) or
    (latency_median_ms, accuracy) over all rows; then SCORING_COLUMNS as the run logged them (empty for runs
    logged before the report stage scored files): accuracy_ci_low / accuracy_ci_high (95 % Wilson),
    p_value / significant (0/1, exact McNemar vs. baseline-float32) and accuracy_delta_control_pp (vs. the
    float control of the same mode); then RULE_COLUMNS when some run has a control or validation figures
    (what `select` decides on). Rows run by experiment (newest first), variant, mode.

    Args:
      runs: summary runs, in the order their rows should appear.
      varying: param names to add as columns.
    """
    threads = _latency_threads(runs)
    rows = [row for run in runs for row in _run_rows(run, varying, threads[run.info.run_id])]
    if not rows:
        raise UserError("the summary runs hold no `<variant>.<mode>.<figure>` metrics: were they logged by "
                        "an older pipeline? Run `dvc repro` again")
    _mark_fronts(rows)
    columns = ["experiment", "run_id", *param_columns(varying), *FIGURE_COLUMNS, *SCORING_COLUMNS,
               *(RULE_COLUMNS if _rule_differs(rows) else ())]
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"gzip_bytes": "Int64", "latency_threads": "Int64", "significant": "Int64"})


def _rule_differs(rows: Sequence[Mapping]) -> bool:
    """Whether some row is decided otherwise than its accuracy_delta_pp says (another reference or split)."""
    return any(row["reference"] is not None and (row["reference"], row["split"]) != (LEGACY_REFERENCE, LEGACY_SPLIT)
               for row in rows)


def build_group_table(table: pd.DataFrame, groups: Sequence[Sequence[Run]],
                      varying: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (seed group, variant, mode): the per-run table averaged over each group's seeds.

    Columns: those of `build_table` followed by GROUP_COLUMNS. `experiment` names the group by its
    experiments joined with '+', run_id lists their run ids (comma-separated) and a `seed` param column lists
    their seeds ('1,2,3'). MEAN_COLUMNS hold the mean over the group's runs (gzip_bytes is then fractional);
    seeds counts the runs that hold the file, accuracy_std and accuracy_delta_pp_std are sample standard
    deviations over them and accuracy_seed_ci_low / _high a 95 % Student-t interval of the mean (all from
    `statistics.seed_summary`). A group of one keeps its run's figures with no spread; a group of several
    leaves PER_RUN_COLUMNS empty. pareto_size / pareto_latency are recomputed on the means.

    Args:
      table: the per-run table (`build_table`) of the runs in `groups`.
      groups: `seed_groups`, in the order their rows should appear.
      varying: the param names `table` has columns for.
    """
    rows_of: dict[str, list[dict]] = {}
    for row in records(table):
        rows_of.setdefault(row["run_id"], []).append(row)
    seed_column = dict(zip(varying, param_columns(varying))).get(SEED)
    rows = []
    for group in groups:
        files: dict[tuple[str, str], list[dict]] = {}
        for run in group:
            for row in rows_of.get(run.info.run_id, []):
                files.setdefault((row["variant"], row["mode"]), []).append(row)
        shared = {"experiment": GROUP_JOIN.join(experiment_name(run) for run in group),
                  "run_id": ",".join(run.info.run_id for run in group)}
        if seed_column:
            shared[seed_column] = ",".join(str(run.data.params.get(SEED)) for run in group)
        rows += sort_rows([{**_group_row(members), **shared} for members in files.values()])
    _mark_fronts(rows)
    columns = [*table.columns, *GROUP_COLUMNS]
    grouped = pd.DataFrame(rows, columns=columns)
    return grouped.astype({"latency_threads": "Int64", "significant": "Int64", "seeds": "Int64"})


def _group_row(members: list[dict]) -> dict:
    """One file of one seed group: `members` are its per-run rows (same variant and mode)."""
    row = {**members[0], "seeds": len(members), **{key: None for key in GROUP_COLUMNS if key != "seeds"}}
    if len(members) == 1:
        return row   # one sample: its figures as they are, its spread unknown (not zero)
    for key in MEAN_COLUMNS:
        row[key] = _over_seeds(members, key)["mean"]
    if len({(member.get("reference"), member.get("split")) for member in members}) > 1:
        row.update(drop_pp=None, test_drop_pp=None)   # drops against different references do not average
    accuracy, delta = _over_seeds(members, "accuracy"), _over_seeds(members, "accuracy_delta_pp")
    row.update(accuracy_std=accuracy["std"], accuracy_seed_ci_low=accuracy["ci_low"],
               accuracy_seed_ci_high=accuracy["ci_high"], accuracy_delta_pp_std=delta["std"])
    row.update({key: None for key in PER_RUN_COLUMNS})
    threads = {member["latency_threads"] for member in members}
    if len(threads) > 1:   # latencies at different thread counts do not average
        row.update(latency_threads=None, latency_median_ms=None, latency_ratio=None)
    return row


def _over_seeds(members: list[dict], key: str) -> dict:
    """`statistics.seed_summary` of one figure over the runs that have it; all None when none has."""
    values = [member.get(key) for member in members if member.get(key) is not None]
    if not values:
        return {"mean": None, "std": None, "ci_low": None, "ci_high": None}
    summary = statistics.seed_summary(values)
    if summary.get("single_seed"):   # one value left: its spread is unknown, not zero
        summary.update(std=None, ci_low=None, ci_high=None)
    return summary


def _mark_fronts(rows: list[dict]) -> None:
    """Set pareto_size / pareto_latency on every row: on the front of (cost, accuracy) over all rows."""
    for flag, cost in (("pareto_size", "gzip_bytes"), ("pareto_latency", rule.cost_figure(rows, "latency"))):
        on_front = pareto_front([(row[cost], row["accuracy"]) for row in rows])
        for row, keep in zip(rows, on_front):
            row[flag] = keep


def param_columns(varying: Sequence[str]) -> list[str]:
    taken = {"experiment", "run_id", *FIGURE_COLUMNS, *SCORING_COLUMNS, *RULE_COLUMNS, *GROUP_COLUMNS}
    return [f"params.{key}" if key in taken else key for key in varying]


def run_records(run: Run) -> dict[tuple[str, str], Record]:
    """{(variant, mode): record} from the run's `<variant>.<mode>.<figure>` summary metrics."""
    return by_file(records_from_summary(run.data.metrics))


def _latency_threads(runs: Sequence[Run]) -> dict[str, int | None]:
    """run_id -> the thread count whose median latency goes in the table.

    Latencies only compare at one thread count, so the lowest count every run measured is used; runs that
    share none fall back to their own lowest.
    """
    measured = {run.info.run_id: set(thread_counts(run_records(run).values())) for run in runs}
    common = set.intersection(*measured.values()) if measured else set()
    if common:
        return {run_id: min(common) for run_id in measured}
    return {run_id: min(counts) if counts else None for run_id, counts in measured.items()}


def _run_rows(run: Run, varying: Sequence[str], threads: int | None) -> list[dict]:
    files = run_records(run)
    # The `accuracy` columns hold the run's primary figure (results/task.py): a detection run's COCO mAP, its
    # bootstrap interval and change in points; `figure` names it, so the rule and the table read one column.
    task = task_of(files.values())
    files = {key: _as_primary(record, task) for key, record in files.items()}
    reference = files.get(variants.split_label(variants.BASELINE_FILE))
    params = {column: run.data.params.get(key) for column, key in zip(param_columns(varying), varying)}
    rows = []
    for (variant, mode), record in files.items():
        control = files.get((variants.CONTROL, mode))
        latency = record.at(threads) if threads is not None else None
        drop = rule.measure_drop(files, (variant, mode), CLASSIFICATION)
        rows.append({
            "experiment": experiment_name(run), "run_id": run.info.run_id, **params,
            "variant": variant, "mode": mode, "figure": task.quality, "accuracy": record.accuracy,
            "accuracy_delta_pp": _delta_pp(record.accuracy, reference and reference.accuracy,
                                           record.accuracy_delta_pp),
            "gzip_bytes": None if record.gzip_bytes is None else int(round(record.gzip_bytes)),
            "gzip_ratio": _ratio(record.gzip_bytes, reference and reference.gzip_bytes, record.gzip_ratio),
            "latency_median_ms": None if latency is None else latency.median_ms,
            "latency_threads": threads,
            "latency_ratio": latency.ratio if latency is not None and latency.ratio is not None
            else record.latency_ratio,
            "accuracy_ci_low": record.accuracy_ci_low, "accuracy_ci_high": record.accuracy_ci_high,
            "p_value": record.p_value,
            "significant": None if record.significant is None else round(record.significant),
            "accuracy_delta_control_pp": _delta_pp(record.accuracy, control and control.accuracy,
                                                   record.accuracy_delta_control_pp),
            "reference": drop and drop.reference, "split": drop and drop.split,
            "val_accuracy": record.val_accuracy,
            "reference_val_accuracy": drop and _reference(files).val_accuracy,
            "reference_accuracy": drop and drop.reference_test,
            "drop_pp": drop and drop.drop_pp, "test_drop_pp": drop and drop.test_drop_pp,
        })
    return sort_rows(rows)


def _as_primary(record: Record, task: Task) -> Record:
    """A detection record with its mAP figures in the accuracy fields the table and the rule read."""
    if task is CLASSIFICATION:
        return record
    return dataclasses.replace(record, accuracy=record.map, val_accuracy=record.val_map,
                               accuracy_ci_low=record.map_ci_low, accuracy_ci_high=record.map_ci_high,
                               accuracy_delta_pp=record.map_delta_pp,
                               accuracy_delta_control_pp=record.map_delta_control_pp, p_value=None)


def _reference(files: Mapping[tuple[str, str], Record]) -> Record:
    return files[rule.reference_file(files)]


def _delta_pp(accuracy: float | None, reference: float | None, logged: float | None) -> float | None:
    # Recomputed from the accuracies so the reference is certainly this run's baseline-float32 (or control);
    # the logged figure only stands in when the run lacks that file.
    if accuracy is None or reference is None:
        return logged
    return (accuracy - reference) * 100.0


def _ratio(value: float | None, reference: float | None, logged: float | None) -> float | None:
    if value is None or not reference:
        return logged
    return value / reference


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """The table as CSV, numbers unrounded, missing figures as empty cells (written atomically)."""
    write_text(path, table.to_csv(index=False, lineterminator="\n"))
    return Path(path)


def records(table: pd.DataFrame) -> list[dict]:
    """The table's rows as plain dicts with None (not NaN / pd.NA) for missing values and Python numbers."""
    return [{key: _plain(value) for key, value in row.items()}
            for row in table.astype(object).to_dict("records")]


def _plain(value):
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def file_name(row: Mapping) -> str:
    """'experiment/variant-mode': how a row is named in plots, printed tables and rejection lines."""
    return f"{row['experiment']}/{row['variant']}-{row['mode']}"

