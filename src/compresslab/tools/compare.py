"""Comparing experiments: every pipeline execution's files in one table, the Pareto fronts across all of them,
and an accuracy-aware choice of the file to ship.

Input is the MLflow "summary" runs the `report` stage logs (tag summary=true, the whole configuration as
dotted params, every figure as `<variant>.<mode>.<figure>` metrics). The newest run of each DVC experiment
name counts; runs that are deleted, unfinished or not summaries are ignored. Runs that repeat another's
params *and* seed on the same data are left out (with a note): a repeat is not another sample.

Seeds: runs whose params are identical except `seed` (`dvc exp run --queue -S 'seed=1,2,3'`) form a seed
group. When some group holds two or more runs, compare.csv has one row per (group, file) with the mean over
seeds, the standard deviation and a Student-t interval (`statistics.seed_summary`), and the fronts and the
choice use those means; the per-run rows go to compare_runs.csv. With one run per configuration the table
is per run, and the comparison says it is single-seed: one run is one sample, its spread unknown.

The choice follows Intel Neural Compressor's accuracy-aware tuning, by the rule every command shares
(`results.selection`): a file qualifies when its validation accuracy lies within a tolerated drop
(percentage points) of its own run's float control, finetune-float32 (baseline-float32 in a run without a
control; the test split only for runs logged without validation figures), and the smallest (or fastest, by
the interleaved latency ratio) qualifying file wins; its held-out test figures are printed beside it. The
float32 references are never candidates.

Pure MLflow, pandas and matplotlib: this module must not import TensorFlow (comparing needs no model).
"""

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from compresslab import paths, variants
from compresslab.tracking import mlflow_log
from compresslab.errors import UserError
from compresslab.outputs import write_json, write_text
from compresslab.reporting import statistics
from compresslab.reporting.metrics import pareto_front
from compresslab.results import selection as rule
from compresslab.results.record import Record, by_file, thread_counts, thread_key
from compresslab.results.summary import records_from_summary
from compresslab.reporting.report import (DPI, KB, TradeoffPoint, draw_tradeoff, fmt, mode_markers, save_figure,
                                         sort_rows)

OUT_DIR = paths.REPORTS / "compare"
FIGURE_COLUMNS = ("variant", "mode", "accuracy", "accuracy_delta_pp", "gzip_bytes", "gzip_ratio",
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
SINGLE_SEED_NOTE = ("single-seed comparison: every figure is one run, one sample; queue seeds "
                    "(`dvc exp run --queue -S 'seed=1,2,3'`) for means and spreads")
# Latency compares across runs only as a ratio timed within each run (each file against its own run's
# baseline-float32, interleaved): milliseconds drift 2x between runs and differ between machines.
LATENCY_RATIO = rule.OBJECTIVES["latency"]
COMPARE_SIZE = (15.0, 6.0)   # inches: two panels side by side, legends outside on the right
_SEARCH_PAGE = 1000
SUMMARY_FILTER = "tags.summary = 'true' and attributes.status = 'FINISHED'"


@dataclass
class Selection:
    """The file an accuracy-aware selection chose, and why each other candidate lost.

    chosen: the winning table row (a dict); rejected: ('exp/variant-mode', reason) for every other file
    except the float32 references; drop: the chosen file's drop by the rule; cost: the figure ranked.
    """
    max_drop: float
    objective: str
    chosen: dict
    rejected: list[tuple[str, str]]
    drop: rule.Drop | None = None
    cost: str = "gzip_bytes"

    @property
    def rule(self) -> str:
        """The rule in words, with the chosen file's reference and split."""
        return rule.describe(self.max_drop, self.objective, self.drop.reference, self.drop.split)


@dataclass
class Comparison:
    """What `compare` found and wrote.

    table: per seed group when `grouped` (`build_group_table`), else per run (`build_table`); runs_table is
    always per run, and is written to runs_csv_path when grouped. groups: the experiment names of each seed
    group, in table order.
    """
    table: pd.DataFrame
    varying: list[str]
    experiments: list[str]
    csv_path: Path
    png_path: Path
    selection: Selection | None = None
    selection_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    runs_table: pd.DataFrame | None = None
    runs_csv_path: Path | None = None
    groups: list[list[str]] = field(default_factory=list)

    @property
    def grouped(self) -> bool:
        """Whether some configuration ran on two or more seeds (and the table holds means)."""
        return any(len(group) > 1 for group in self.groups)


# ------------------------------------------------------------------------------------------ entry point

def compare(experiments: Sequence[str] | None = None, *, out: str | Path = OUT_DIR, max_drop: float | None = None,
            objective: str = "size", uri: str | None = None) -> Comparison:
    """Gather the summary runs into one table, write compare.csv and compare.png, and optionally select a file.

    Args:
      experiments: DVC experiment names to keep (the `dvc_exp_name` tag; 'workspace' for `dvc repro`);
        None keeps all.
      out: the folder to write into (created).
      max_drop: when set, choose a file whose accuracy is at most this many percentage points below its
        run's baseline-float32, and write out/selection.json. When None, a selection.json left by an earlier
        call is removed so the folder never mixes two comparisons.
      objective: 'size' (smallest gzip_bytes) or 'latency' (smallest median latency) for the choice.
      uri: the MLflow tracking URI; `mlflow_log.tracking_uri()` when None.

    Returns:
      A Comparison: the table (see `build_table`; `build_group_table` when some configuration ran on several
      seeds, the per-run rows then also in out/compare_runs.csv), the varying param names, the experiments
      in table order, the paths written, the selection and notes worth printing (e.g. runs on different
      data, single-seed).

    Raises:
      UserError: no summary run, an unknown experiment name, a bad max_drop or objective, or no file within
        max_drop (after compare.csv and compare.png are written).
    """
    if max_drop is not None:
        rule.check_objective(objective)
        rule.check_max_drop(max_drop)
    runs, repeats = drop_repeats(summary_runs(experiments, uri=uri))
    varying = varying_params(runs)
    runs_table = build_table(runs, varying)
    groups = seed_groups(runs)
    grouped = any(len(group) > 1 for group in groups)
    table = build_group_table(runs_table, groups, varying) if grouped else runs_table
    out = Path(out)
    csv_path = write_table(table, out / "compare.csv")
    # Like selection.json: a per-run file left by an earlier grouped comparison must not outlive it.
    runs_csv_path = out / "compare_runs.csv"
    runs_csv_path.unlink(missing_ok=True)
    if grouped:
        write_table(runs_table, runs_csv_path)
    png_path = plot_comparison(table, out / "compare.png")
    result = Comparison(table, varying, [experiment_name(run) for run in runs], csv_path, png_path,
                        notes=_notes(runs, runs_table) + seed_notes(groups) + repeat_notes(repeats),
                        runs_table=runs_table,
                        runs_csv_path=runs_csv_path if grouped else None,
                        groups=[[experiment_name(run) for run in group] for group in groups])
    selection_path = out / "selection.json"
    selection_path.unlink(missing_ok=True)
    if max_drop is not None:
        try:
            result.selection = select(table, max_drop, objective)
        except UserError as err:
            raise UserError(f"{err} (the comparison is in {csv_path})") from None
        result.selection_path = write_selection(result.selection, varying, selection_path)
        result.notes += rule.latency_note(result.selection.cost)
    return result


# ----------------------------------------------------------------------------------------------- runs

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


def repeat_notes(repeats: Mapping[str, Sequence[str]]) -> list[str]:
    return [f"{', '.join(names)} repeat{'s' * (len(names) == 1)} {name}'s configuration and seed: left out, the "
            f"newest run stands for them (a repeat on the same seed is not another sample)"
            for name, names in repeats.items()]


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

    Columns: experiment, run_id, the `varying` params (as logged, text), variant, mode, accuracy (fraction),
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
    columns = ["experiment", "run_id", *_param_columns(varying), *FIGURE_COLUMNS, *SCORING_COLUMNS,
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
    seed_column = dict(zip(varying, _param_columns(varying))).get(SEED)
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


def _param_columns(varying: Sequence[str]) -> list[str]:
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
    reference = files.get(variants.split_label(variants.BASELINE_FILE))
    params = {column: run.data.params.get(key) for column, key in zip(_param_columns(varying), varying)}
    rows = []
    for (variant, mode), record in files.items():
        control = files.get((variants.CONTROL, mode))
        latency = record.at(threads) if threads is not None else None
        drop = rule.measure_drop(files, (variant, mode))
        rows.append({
            "experiment": experiment_name(run), "run_id": run.info.run_id, **params,
            "variant": variant, "mode": mode, "accuracy": record.accuracy,
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


def _notes(runs: Sequence[Run], table: pd.DataFrame) -> list[str]:
    notes = []
    hashes = {run.data.tags.get("data_hash") for run in runs}
    if len(hashes) > 1:
        notes.append(f"the runs were evaluated on different data (data_hash {', '.join(sorted(map(str, hashes)))}"
                     f"): their accuracies do not compare directly")
    fingerprints = {key for run in runs for key in run.data.tags if key.startswith("fingerprint.")
                    if len({other.data.tags.get(key) for other in runs}) > 1}
    if fingerprints:
        compared = ("latency is compared as each file's ratio to its own run's baseline-float32 (timed in the same "
                    "process)" if rule.cost_figure(records(table), "latency") == LATENCY_RATIO
                    else "their milliseconds do not compare directly")
        notes.append(f"the runs were timed on different machines or software ({', '.join(sorted(fingerprints))} "
                     f"differ): {compared}")
    threads = set(table["latency_threads"].dropna())
    if len(threads) > 1:
        notes.append(f"the runs share no thread count: latency is each run's lowest ({sorted(threads)} "
                     f"threads), so latencies of different runs do not compare directly")
    return notes


def seed_notes(groups: Sequence[Sequence[Run]]) -> list[str]:
    """What the reader must know about seeds: single-seed, or how many groups and seeds the means cover."""
    if not any(len(group) > 1 for group in groups):
        return [SINGLE_SEED_NOTE]
    described = "; ".join(f"{GROUP_JOIN.join(experiment_name(run) for run in group)}: {len(group)} seed(s) "
                          f"({','.join(str(run.data.params.get(SEED)) for run in group)})" for group in groups)
    notes = [f"{len(groups)} seed group(s) over {sum(map(len, groups))} runs ({described}): figures are means "
             f"over seeds, ± is the standard deviation between seeds and the seed interval a 95 % Student-t "
             f"interval of the mean; the fronts and the choice use the means; per-run figures (with each run's "
             f"Wilson interval and McNemar test) are in compare_runs.csv"]
    alone = [experiment_name(group[0]) for group in groups if len(group) == 1]
    if alone:
        notes.append(f"{', '.join(alone)} ran on a single seed: its rows are one sample each, with no spread")
    return notes


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


# ------------------------------------------------------------------------------------------ selection

def select(table: pd.DataFrame, max_drop: float, objective: str = "size") -> Selection:
    """Accuracy-aware choice by `results.selection`'s rule: the smallest (or fastest) file within max_drop pp of
    its run's float control (else baseline-float32), on the validation split (else test).

    Ties on the objective go to the more accurate file (on the decision split), then to the one listed first
    (the newest run).

    Args:
      table: the comparison table (`build_table`).
      max_drop: the tolerated accuracy drop in percentage points (>= 0).
      objective: 'size' (gzip_bytes) or 'latency' (latency_ratio; milliseconds only when no row has a ratio).

    Returns:
      A Selection; every file but the choice and the float32 references gets a rejection reason.

    Raises:
      UserError: when no file qualifies, naming the smallest drop found and the --max-drop that admits it.
    """
    rows = records(table)
    cost = rule.cost_figure(rows, objective)
    rule.check_max_drop(max_drop)
    pairs = [(row, rule.Candidate(file_name(row), row_drop(row), row[cost])) for row in rows
             if not rule.is_reference(row["variant"], row["mode"])]
    chosen, rejected = rule.choose([candidate for _, candidate in pairs], max_drop, cost)
    row = next(row for row, candidate in pairs if candidate is chosen)
    return Selection(float(max_drop), objective, row, rejected, chosen.drop, cost)


def row_drop(row: Mapping) -> rule.Drop | None:
    """The rule's figures of one table row: its rule columns, or for runs logged without a control or
    validation figures what accuracy_delta_pp says (against baseline-float32, on the test split)."""
    if row.get("reference") is not None:
        val = row["split"] == "val"
        return rule.Drop(row["reference"], row["split"], row["val_accuracy"] if val else row["accuracy"],
                         row["reference_val_accuracy"] if val else row["reference_accuracy"], row["drop_pp"],
                         row["accuracy"], row["reference_accuracy"], row["test_drop_pp"])
    if "reference" in row:   # the table has rule columns, but this run has no float32 reference
        return None
    delta = row["accuracy_delta_pp"]
    drop = None if delta is None else -delta
    return rule.Drop(LEGACY_REFERENCE, LEGACY_SPLIT, row["accuracy"], None, drop, row["accuracy"], None, drop)


def write_selection(selection: Selection, varying: Sequence[str], path: str | Path) -> Path:
    """selection.json: the rule, the chosen file with its figures and params, and every rejection.

    For a seed group's file the figures are means, with its seeds and spreads (GROUP_COLUMNS).
    """
    chosen = selection.chosen
    params = {key: chosen.get(column) for column, key in zip(_param_columns(varying), varying)}
    figures = {key: chosen.get(key) for key in ("accuracy", "accuracy_delta_pp", "gzip_bytes", "gzip_ratio",
                                                "latency_median_ms", "latency_threads", LATENCY_RATIO)}
    figures.update({key: chosen[key] for key in (*SCORING_COLUMNS, *GROUP_COLUMNS) if key in chosen})
    drop = selection.drop
    figures.update(reference=drop.reference, split=drop.split, drop_pp=drop.drop_pp, test_drop_pp=drop.test_drop_pp,
                   decision_accuracy=drop.decision, reference_decision_accuracy=drop.reference_decision)
    write_json(path, {
        "max_drop_pp": selection.max_drop,
        "objective": selection.objective,
        "rule": selection.rule,
        "ranked_by": selection.cost,
        "chosen": {"experiment": chosen["experiment"], "run_id": chosen["run_id"], "variant": chosen["variant"],
                   "mode": chosen["mode"], "file": str(paths.tflite_file(chosen["variant"], chosen["mode"])),
                   **figures, "params": params},
        "rejected": [{"file": name, "reason": reason} for name, reason in selection.rejected],
    })
    return Path(path)


# ---------------------------------------------------------------------------------------------- text

def summary_lines(result: Comparison) -> list[str]:
    """What the command prints: the runs, the Pareto front, the selection with its reasons, the paths."""
    table = result.table
    groups = f" in {len(result.groups)} seed group(s)" if result.grouped else ""
    lines = [f"compare: {len(result.experiments)} run(s) ({', '.join(result.experiments)}){groups}, {len(table)} "
             f"files; params that differ: {', '.join(result.varying) or 'none'}"]
    lines += [f"note: {note}" for note in result.notes]
    lines += ["", "Pareto front (size: smallest file for its accuracy; latency: fastest for its accuracy):",
              front_text(table), ""]
    if result.selection is not None:
        lines += selection_lines(result.selection) + [""]
    lines += [f"wrote {path}" for path in (result.csv_path, result.runs_csv_path, result.png_path,
                                           result.selection_path) if path]
    return lines


def front_text(table: pd.DataFrame) -> str:
    """The rows on either front as an aligned text table, smallest file first (with ± std over seeds and the
    number of seeds for a seed group's table)."""
    front = [row for row in records(table) if row["pareto_size"] or row["pareto_latency"]]
    if not front:
        return "  (no file has both an accuracy and a size or latency)"
    front.sort(key=lambda row: (row["gzip_bytes"] is None, row["gzip_bytes"] or 0, file_name(row)))
    shown = pd.DataFrame({
        "file": [file_name(row) for row in front],
        "acc %": [fmt(row["accuracy"], "{:.2f}", 100) + _spread(row.get("accuracy_std"), 100) for row in front],
        "Δ pp": [fmt(row["accuracy_delta_pp"], "{:+.2f}") + _spread(row.get("accuracy_delta_pp_std"))
                 for row in front],
        "gzip KB": [fmt(row["gzip_bytes"], "{:.1f}", 1 / KB) for row in front],
        "ms": [fmt(row["latency_median_ms"], "{:.3f}") for row in front],
        "front": [", ".join(name for name, flag in (("size", row["pareto_size"]),
                                                    ("latency", row["pareto_latency"])) if flag)
                  for row in front],
    })
    if "seeds" in table.columns:
        shown.insert(1, "seeds", [row["seeds"] for row in front])
    return shown.to_string(index=False)


def _spread(std: float | None, scale: float = 1.0) -> str:
    return "" if std is None else f" ± {std * scale:.2f}"


def selection_lines(selection: Selection) -> list[str]:
    """The choice, the split it was decided on with the held-out test figures beside it, where to get its
    file, and one line per rejected file.

    A seed group's choice is made on means: its lines add the spread over seeds, and say so when the mean
    drop is within it (|mean change| < its std): over seeds the file then differs from its baseline by noise.
    """
    row, drop = selection.chosen, selection.drop
    seeds = row.get("seeds") or 1
    latency = "" if row["latency_median_ms"] is None else \
        f", {row['latency_median_ms']:.3f} ms at {row['latency_threads']} thread(s)"
    if row.get(LATENCY_RATIO) is not None and selection.cost == LATENCY_RATIO:
        latency += f" ({row[LATENCY_RATIO]:.3f}x baseline-float32)"
    if seeds > 1:
        where = f"any of the {seeds} seed runs {row['experiment']} (`dvc exp apply NAME` restores that seed's)"
    elif row["experiment"] == "workspace":
        where = "the workspace run"
    else:
        where = f"experiment {row['experiment']} (`dvc exp apply {row['experiment']}` restores it)"
    split = "" if drop.split == LEGACY_SPLIT else f" on the {rule.SPLIT_NAMES[drop.split]} split"
    against = "" if drop.split == LEGACY_SPLIT else f" vs {drop.reference}, held-out test"
    test_change = "" if drop.test_drop_pp is None else f" ({rule.pp(-drop.test_drop_pp, signed=True)} pp{against})"
    lines = [f"selection: the {'smallest' if selection.objective == 'size' else 'fastest'} file within "
             f"{selection.max_drop:g} pp of its run's {drop.reference} accuracy{split}"
             f"{' (means over seeds)' if 'seeds' in row else ''}",
             f"chosen: {file_name(row)}: {row['accuracy'] * 100:.2f} %{test_change}, "
             f"{fmt(row['gzip_bytes'], '{:.1f}', 1 / KB)} KB gzipped{latency}"]
    # The spread over seeds is of the change against baseline-float32 (accuracy_delta_pp_std): so is this line.
    delta, spread = row["accuracy_delta_pp"], row.get("accuracy_delta_pp_std")
    if seeds > 1 and spread is not None and row["accuracy_std"] is not None and delta is not None:
        lines.append(f"  mean of {seeds} seeds: accuracy {row['accuracy'] * 100:.2f} ± "
                     f"{row['accuracy_std'] * 100:.2f} % (95 % seed interval {row['accuracy_seed_ci_low'] * 100:.2f}"
                     f"–{row['accuracy_seed_ci_high'] * 100:.2f} %), change {delta:+.2f} ± {spread:.2f} pp")
        if abs(delta) < spread:
            lines.append(f"  the mean drop is within the spread: |{delta:+.2f}| pp < {spread:.2f} pp std between "
                         f"seeds, so over seeds this file is not told apart from baseline-float32")
    elif "seeds" in row:
        lines.append("  one seed only: no spread is known for this file")
    lines.append(_decided_on(drop))
    return [*lines, f"  file {paths.tflite_file(row['variant'], row['mode'])} of {where}",
            *(f"rejected {name}: {reason}" for name, reason in selection.rejected)]


def _decided_on(drop: rule.Drop) -> str:
    """Which split chose the file: the validation split keeps the test figures above held out."""
    if drop.split == "val":
        return (f"  decided on the validation split: {drop.decision * 100:.2f} % "
                f"({rule.pp(-drop.drop_pp, signed=True)} pp vs {drop.reference}); the test figures above are held "
                f"out, so the choice does not inflate them")
    return (f"  decided on the test split (pp vs {drop.reference}): these runs hold no validation figures, so the "
            f"test accuracy above took part in the choice and overstates what a new test set would show")


def plot_comparison(table: pd.DataFrame, path: str | Path) -> Path:
    """Two panels, accuracy (%) against gzipped size (KB) and against median latency (ms).

    One point per row: colour per experiment, marker per mode. Each panel's Pareto front is a step line
    (the best accuracy reachable within each budget) and its points are labelled `exp/variant-mode`
    (points at the same place share one label). A cost axis is logarithmic when it spans more than 10x.
    A seed group's point is its mean, with an error bar of ± one standard deviation of accuracy over seeds.

    Args:
      table: the comparison table (`build_table`).
      path: the PNG to write.

    Returns:
      The path written.
    """
    rows = records(table)
    fig = Figure(figsize=COMPARE_SIZE, dpi=DPI, layout="constrained")
    size_ax, latency_ax = fig.subplots(1, 2)
    colours = _experiment_colours(rows)
    markers = mode_markers(rows)
    threads = sorted({row["latency_threads"] for row in rows if row["latency_threads"] is not None})
    at = f"at {threads[0]} thread{'s' * (threads[0] > 1)}, " if len(threads) == 1 else ""
    _panel(size_ax, rows, "gzip_bytes", 1 / KB, "pareto_size", colours, markers,
           "gzipped size (KB, smaller is better)", "Accuracy vs. size")
    if rule.cost_figure(rows, "latency") == LATENCY_RATIO:
        _panel(latency_ax, rows, LATENCY_RATIO, 1.0, "pareto_latency", colours, markers,
               f"latency / its run's baseline-float32 ({at}timed interleaved; lower is better)",
               "Accuracy vs. latency")
    else:
        _panel(latency_ax, rows, "latency_median_ms", 1.0, "pareto_latency", colours, markers,
               f"median latency (ms {at}lower is better)", "Accuracy vs. latency")
    _legends(fig, colours, markers, spread=any(row.get("accuracy_std") is not None for row in rows))
    return save_figure(fig, path)


def _panel(ax, rows: list[dict], cost: str, scale: float, flag: str, colours: dict, markers: dict,
           xlabel: str, title: str) -> None:
    points = [row for row in rows if (row[cost] or 0) > 0 and row["accuracy"] is not None]
    if not points:
        ax.text(0.5, 0.5, f"no file has both {cost} and accuracy", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    draw_tradeoff(ax, [TradeoffPoint(row[cost] * scale, row["accuracy"] * 100, file_name(row),
                                     colours[row["experiment"]], markers[row["mode"]], bool(row[flag]),
                                     None if row.get("accuracy_std") is None else row["accuracy_std"] * 100)
                       for row in points], xlabel=xlabel, title=title)


def _experiment_colours(rows: list[dict]) -> dict[str, tuple]:
    names = list(dict.fromkeys(row["experiment"] for row in rows))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _legends(fig: Figure, colours: dict[str, tuple], markers: dict[str, str], spread: bool = False) -> None:
    experiments = [Line2D([], [], linestyle="", marker="o", color=colour, markeredgecolor="black", label=name)
                   for name, colour in colours.items()]
    modes = [Line2D([], [], linestyle="", marker=marker, color="lightgrey", markeredgecolor="black", label=name)
             for name, marker in markers.items()]
    front = [Line2D([], [], color="grey", linestyle="--", label="Pareto front")]
    if spread:
        front.append(Line2D([], [], color="grey", marker="|", markersize=12, linestyle="",
                            label="± 1 std over seeds"))
    fig.legend(handles=experiments, title="experiment", loc="outside right upper", fontsize=8, title_fontsize=9)
    fig.legend(handles=modes + front, title="mode", loc="outside right lower", fontsize=8, title_fontsize=9)


