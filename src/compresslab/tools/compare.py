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

Where the pieces live: the summary runs are read by `tracking.summaries`, the table and the seed groups are
built by `reporting.comparison_table`, compare.png is drawn by `reporting.compare_plot`; this module runs them,
applies the selection rule and writes what the command prints.

Pure MLflow, pandas and matplotlib: this module must not import TensorFlow (comparing needs no model).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.entities import Run

from compresslab import paths
from compresslab.errors import UserError
from compresslab.outputs import write_json
from compresslab.reporting.compare_plot import plot_comparison
from compresslab.reporting.comparison_table import (GROUP_COLUMNS, GROUP_JOIN, LATENCY_RATIO, LEGACY_REFERENCE,
                                                    LEGACY_SPLIT, SCORING_COLUMNS, SEED, build_group_table,
                                                    build_table, drop_repeats, file_name, param_columns, records,
                                                    seed_groups, write_table)
from compresslab.reporting.formatting import KB, fmt
from compresslab.results import selection as rule
from compresslab.tracking.summaries import experiment_name, summary_runs, timed_on, varying_params

OUT_DIR = paths.REPORTS / "compare"
SINGLE_SEED_NOTE = ("single-seed comparison: every figure is one run, one sample; queue seeds "
                    "(`dvc exp run --queue -S 'seed=1,2,3'`) for means and spreads")


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
            objective: str = "size", uri: str | None = None, device: str | None = None) -> Comparison:
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
      device: a board of evaluate.devices: every latency (the table, the plot, the latency objective) is the
        one measured on it; runs that timed nothing there are left out, with a note.

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
    device_notes = []
    if device is not None:
        runs, left_out = timed_on(runs, device)
        device_notes = [f"latency is as timed on device {device}"
                        + (f"; left out, timed nothing there: {', '.join(left_out)}" if left_out else "")]
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
                        notes=device_notes + _notes(runs, runs_table) + seed_notes(groups) + repeat_notes(repeats),
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



# ----------------------------------------------------------------------------------------------- notes

def repeat_notes(repeats: Mapping[str, Sequence[str]]) -> list[str]:
    return [f"{', '.join(names)} repeat{'s' * (len(names) == 1)} {name}'s configuration and seed: left out, the "
            f"newest run stands for them (a repeat on the same seed is not another sample)"
            for name, names in repeats.items()]


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
    params = {key: chosen.get(column) for column, key in zip(param_columns(varying), varying)}
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
    # The accuracy columns hold the task's primary figure (`figure`: accuracy, or a detector's mAP).
    mean_ap = any(row.get("figure") == "map" for row in front)
    shown = pd.DataFrame({
        "file": [file_name(row) for row in front],
        "mAP x100" if mean_ap else "acc %": [fmt(row["accuracy"], "{:.2f}", 100)
                                             + _spread(row.get("accuracy_std"), 100) for row in front],
        "Δ points" if mean_ap else "Δ pp": [fmt(row["accuracy_delta_pp"], "{:+.2f}")
                                            + _spread(row.get("accuracy_delta_pp_std")) for row in front],
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
    # `accuracy` holds the task's primary figure: a detection run's is its COCO mAP.
    figure, quality = (("mAP", f"mAP {row['accuracy']:.4f}") if row.get("figure") == "map" else
                       ("accuracy", f"{row['accuracy'] * 100:.2f} %"))
    lines = [f"selection: the {'smallest' if selection.objective == 'size' else 'fastest'} file within "
             f"{selection.max_drop:g} pp of its run's {drop.reference} {figure}{split}"
             f"{' (means over seeds)' if 'seeds' in row else ''}",
             f"chosen: {file_name(row)}: {quality}{test_change}, "
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
    lines.append(_decided_on(drop, figure))
    return [*lines, f"  file {paths.tflite_file(row['variant'], row['mode'])} of {where}",
            *(f"rejected {name}: {reason}" for name, reason in selection.rejected)]


def _decided_on(drop: rule.Drop, figure: str = "accuracy") -> str:
    """Which split chose the file: the validation split keeps the test figures above held out."""
    if drop.split == "val":
        decision = f"mAP {drop.decision:.4f}" if figure == "mAP" else f"{drop.decision * 100:.2f} %"
        return (f"  decided on the validation split: {decision} "
                f"({rule.pp(-drop.drop_pp, signed=True)} pp vs {drop.reference}); the test figures above are held "
                f"out, so the choice does not inflate them")
    return (f"  decided on the test split (pp vs {drop.reference}): these runs hold no validation figures, so the "
            f"test accuracy above took part in the choice and overstates what a new test set would show")


