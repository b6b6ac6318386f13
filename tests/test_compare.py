"""`compresslab compare` on a real MLflow SQLite store holding hand-made summary runs with known answers.

Three experiments of a pruning sweep (exp-a/b/c: prune.final_sparsity 0.5/0.8/0.9) share one baseline
(float32: 96.0 %, 600 KB; int8: 95.5 %, 170 KB) and differ in their pruned files:

    exp   pruned-float32              pruned-int8
    a     95.8 % (-0.2 pp), 350 KB    95.2 % (-0.8 pp), 100 KB
    b     95.0 % (-1.0 pp), 200 KB    94.5 % (-1.5 pp),  60 KB
    c     93.0 % (-3.0 pp), 150 KB    91.69 % (-4.31 pp), 40 KB

A stale exp-a run (another model) is logged before the real one, and a non-summary run after them all.
These runs predate the report stage's scoring (no intervals, p-values or control): a single-seed comparison.

A second store holds a seed group, exp-s1/s2/s3 (seeds 1, 2, 3 of sparsity 0.8), beside exp-one (sparsity
0.5, seed 42), with the scoring figures; see SEEDED.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from scipy import stats
from mlflow.tracking import MlflowClient

from compresslab.tracking import mlflow_log
from compresslab.cli import main
from compresslab.reporting import compare_plot
from compresslab.tools.compare import (SINGLE_SEED_NOTE, compare, file_name, select, selection_lines,
                                          summary_lines)
from compresslab.errors import UserError

KB = 1024
SPARSITY = {"exp-a": 0.5, "exp-b": 0.8, "exp-c": 0.9}
# (accuracy, gzip KB, median ms at 1 thread) per file; latencies differ per run as measurements do.
FILES = {
    "exp-a": {("baseline", "float32"): (0.96, 600, 1.00), ("baseline", "int8"): (0.955, 170, 0.40),
              ("pruned", "float32"): (0.958, 350, 0.98), ("pruned", "int8"): (0.952, 100, 0.42)},
    "exp-b": {("baseline", "float32"): (0.96, 600, 1.02), ("baseline", "int8"): (0.955, 170, 0.41),
              ("pruned", "float32"): (0.950, 200, 0.97), ("pruned", "int8"): (0.945, 60, 0.43)},
    "exp-c": {("baseline", "float32"): (0.96, 600, 1.01), ("baseline", "int8"): (0.955, 170, 0.39),
              ("pruned", "float32"): (0.930, 150, 0.99), ("pruned", "int8"): (0.9169, 40, 0.44)},
}


def summary_metrics(files: dict) -> dict:
    """The metrics the report stage logs, `<variant>.<mode>.<figure>`, at 1 and 2 threads."""
    base_acc, base_kb, _ = files[("baseline", "float32")]
    metrics = {}
    for (variant, mode), (accuracy, kb, ms) in files.items():
        prefix = f"{variant}.{mode}."
        metrics.update({prefix + "accuracy": accuracy, prefix + "gzip_bytes": kb * KB,
                        prefix + "latency_median_ms_t1": ms, prefix + "latency_median_ms_t2": ms * 0.6,
                        prefix + "accuracy_delta_pp": (accuracy - base_acc) * 100,
                        prefix + "gzip_ratio": kb / base_kb, prefix + "sparsity": 0.0})
    return metrics


def params(sparsity: float, model: str = "firenet") -> dict:
    return {"model": {"name": model}, "prune": {"final_sparsity": sparsity, "layers": "all"}, "seed": 42,
            "evaluate": {"threads": [1, 2]}}


def use_store(patch: pytest.MonkeyPatch, root: Path, cwd: Path) -> None:
    """Log to and read from root/mlflow.db (the DVC_ROOT rule, as in a queued experiment), working in cwd."""
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    patch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    patch.setenv("DVC_ROOT", str(root))
    patch.chdir(cwd)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project root whose mlflow.db holds the runs; returns (root, {experiment: newest run id})."""
    root = tmp_path_factory.mktemp("project")
    ids = {}
    with pytest.MonkeyPatch.context() as patch:
        use_store(patch, root, root)
        patch.setenv("DVC_EXP_NAME", "exp-a")
        stale = {key: value - 0.1 if key.endswith("accuracy") else value
                 for key, value in summary_metrics(FILES["exp-a"]).items()}
        mlflow_log.log_run("report", params=params(0.5, model="mlp"), metrics=stale,
                         tags={"summary": "true"}, run_name="exp-a: mlp")
        for name in SPARSITY:
            patch.setenv("DVC_EXP_NAME", name)
            ids[name] = mlflow_log.log_run("report", params=params(SPARSITY[name]),
                                         metrics=summary_metrics(FILES[name]), tags={"summary": "true"},
                                         run_name=f"{name}: firenet")
        mlflow_log.log_run("prune", params=params(0.95), metrics={"pruned.int8.accuracy": 0.99})
    return root, ids


@pytest.fixture
def project(store, tmp_path, monkeypatch):
    """Run in a fresh working folder whose tracking URI is the shared store; returns the run ids."""
    root, ids = store
    use_store(monkeypatch, root, tmp_path)
    return ids


def row(table: pd.DataFrame, experiment: str, variant: str, mode: str) -> pd.Series:
    found = table[(table.experiment == experiment) & (table.variant == variant) & (table["mode"] == mode)]
    assert len(found) == 1, found
    return found.iloc[0]


def front(table: pd.DataFrame, flag: str) -> set[str]:
    return {f"{r.experiment}/{r.variant}-{r['mode']}" for _, r in table[table[flag]].iterrows()}


def test_one_row_per_file_of_the_newest_run_with_the_swept_param_as_a_column(project):
    result = compare(out="out")
    table = result.table
    assert result.experiments == ["exp-c", "exp-b", "exp-a"]  # newest first
    assert result.varying == ["prune.final_sparsity"]  # the stale run's model.name=mlp no longer counts
    assert list(table.columns) == [
        "experiment", "run_id", "prune.final_sparsity", "variant", "mode", "figure", "accuracy", "accuracy_delta_pp",
        "gzip_bytes", "gzip_ratio", "latency_median_ms", "latency_threads", "latency_ratio", "pareto_size",
        "pareto_latency",
        "accuracy_ci_low", "accuracy_ci_high", "p_value", "significant", "accuracy_delta_control_pp"]
    assert len(table) == 12 and set(table["figure"]) == {"accuracy"}
    assert list(table.experiment[:4]) == ["exp-c"] * 4
    assert list(zip(table.variant[:4], table["mode"][:4])) == [
        ("baseline", "float32"), ("baseline", "int8"), ("pruned", "float32"), ("pruned", "int8")]
    assert set(table.run_id) == set(project.values())
    pruned = row(table, "exp-b", "pruned", "int8")
    assert pruned["prune.final_sparsity"] == "0.8" and pruned.run_id == project["exp-b"]
    assert pruned.accuracy == pytest.approx(0.945) and pruned.accuracy_delta_pp == pytest.approx(-1.5)
    assert pruned.gzip_bytes == 60 * KB and pruned.gzip_ratio == pytest.approx(0.1)
    # The lowest thread count every run measured is 1, not the faster 2-thread figure.
    assert pruned.latency_threads == 1 and pruned.latency_median_ms == pytest.approx(0.43)
    assert row(table, "exp-a", "baseline", "float32").accuracy_delta_pp == 0.0
    assert result.selection is None and not (result.csv_path.parent / "selection.json").exists()
    # Runs logged before the report stage scored files: the scoring columns are there, empty.
    assert table[["accuracy_ci_low", "accuracy_ci_high", "p_value", "significant",
                  "accuracy_delta_control_pp"]].isna().all().all()
    # Every configuration ran on one seed (42): the table is per run, and says it is single-seed.
    assert not result.grouped and result.runs_csv_path is None
    assert SINGLE_SEED_NOTE in result.notes
    assert not (result.csv_path.parent / "compare_runs.csv").exists()


def test_pareto_flags_over_all_experiments(project):
    table = compare(out="out").table
    # Equal points never dominate each other: the shared baselines all stay on the size front.
    assert front(table, "pareto_size") == {
        "exp-a/baseline-float32", "exp-b/baseline-float32", "exp-c/baseline-float32",
        "exp-a/baseline-int8", "exp-b/baseline-int8", "exp-c/baseline-int8",
        "exp-a/pruned-float32", "exp-a/pruned-int8", "exp-b/pruned-int8", "exp-c/pruned-int8"}
    assert front(table, "pareto_latency") == {"exp-c/baseline-int8", "exp-a/pruned-float32",
                                              "exp-a/baseline-float32"}


def test_a_looser_drop_picks_a_smaller_file_and_writes_the_choice(project, tmp_path):
    loose = compare(out="out", max_drop=2).selection
    assert (loose.chosen["experiment"], loose.chosen["variant"], loose.chosen["mode"]) == ("exp-b", "pruned",
                                                                                         "int8")
    tight = compare(out="out", max_drop=1)
    chosen = tight.selection.chosen
    assert (chosen["experiment"], chosen["variant"], chosen["mode"]) == ("exp-a", "pruned", "int8")
    reasons = dict(tight.selection.rejected)
    assert len(reasons) == 8 and not any("baseline-float32" in name for name in reasons)
    assert reasons["exp-b/pruned-int8"] == "accuracy drop 1.50 pp > 1.00 pp"
    assert reasons["exp-c/pruned-int8"] == "accuracy drop 4.31 pp > 1.00 pp"
    # exp-b's pruned float32 loses exactly 1 pp (-1.0000000000000009 in floats): it qualifies, but is larger.
    assert reasons["exp-b/pruned-float32"] == "larger: 200.0 KB vs 100.0 KB chosen"
    saved = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert saved["max_drop_pp"] == 1.0 and saved["objective"] == "size"
    assert saved["chosen"]["run_id"] == project["exp-a"] and saved["chosen"]["gzip_bytes"] == 100 * KB
    assert saved["chosen"]["file"] == "models/tflite/pruned/pruned-int8.tflite"
    assert saved["chosen"]["params"] == {"prune.final_sparsity": "0.5"}
    assert {"file": "exp-b/pruned-int8", "reason": "accuracy drop 1.50 pp > 1.00 pp"} in saved["rejected"]
    compare(out="out")  # a comparison without a choice leaves no stale selection behind
    assert not (tmp_path / "out" / "selection.json").exists()


def test_latency_objective_and_ties(project):
    table = compare(out="out").table
    fastest = select(table, 1, objective="latency")
    assert (fastest.chosen["experiment"], fastest.chosen["variant"]) == ("exp-c", "baseline")
    assert dict(fastest.rejected)["exp-a/baseline-int8"] == "slower: 0.400 ms vs 0.390 ms chosen"
    # Within 0.6 pp only the three identical baseline int8 files qualify: the newest run's is taken.
    tie = select(table, 0.6)
    assert (tie.chosen["experiment"], tie.chosen["variant"], tie.chosen["mode"]) == ("exp-c", "baseline", "int8")
    assert dict(tie.rejected)["exp-a/baseline-int8"].startswith("ties with the choice (170.0 KB")
    with pytest.raises(UserError, match="--max-drop must be"):
        select(table, -1)


def test_cli_writes_csv_and_png_and_prints_front_reasons_and_paths(project, tmp_path, capsys):
    main(["compare", "--max-drop", "1"])
    out = capsys.readouterr().out
    folder = tmp_path / "reports" / "compare"
    assert "params that differ: prune.final_sparsity" in out
    assert "exp-c/pruned-int8" in out.split("Pareto front")[1].split("selection")[0]  # in the front table
    assert "chosen: exp-a/pruned-int8: 95.20 % (-0.80 pp), 100.0 KB gzipped" in out
    assert "rejected exp-b/pruned-int8: accuracy drop 1.50 pp > 1.00 pp" in out
    assert "rejected exp-a/baseline-int8: larger: 170.0 KB vs 100.0 KB chosen" in out
    assert f"note: {SINGLE_SEED_NOTE}" in out
    assert out.strip().splitlines()[-3:] == [f"wrote {path}" for path in (
        "reports/compare/compare.csv", "reports/compare/compare.png", "reports/compare/selection.json")]
    csv = pd.read_csv(folder / "compare.csv")
    assert len(csv) == 12 and csv["pareto_size"].sum() == 10
    assert csv.loc[(csv.experiment == "exp-c") & (csv.variant == "pruned") & (csv["mode"] == "int8"),
                   "prune.final_sparsity"].item() == 0.9
    png = (folder / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    main(["compare", "--max-drop", "1", "--objective", "latency", "--experiments", "exp-a", "exp-b"])
    out = capsys.readouterr().out
    assert "chosen: exp-a/baseline-int8" in out and "exp-c" not in out
    assert "params that differ: prune.final_sparsity" in out


def test_impossible_drop_is_one_line_with_the_best_drop(project, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["compare", "--max-drop", "0.1", "--out", "cmp"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "smallest drop is 0.20 pp (exp-a/pruned-float32)" in err and "--max-drop 0.2 or more" in err
    assert (tmp_path / "cmp" / "compare.csv").is_file() and not (tmp_path / "cmp" / "selection.json").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["compare", "--experiments", "exp-a", "exp-z"], "no summary run for experiment(s) exp-z"),
    (["compare", "--objective", "latency"], "pass --max-drop"),
    (["compare", "--max-drop", "-1"], "--max-drop must be"),
])
def test_bad_arguments_are_one_line_errors(project, capsys, argv, fragment):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and fragment in err


def test_no_summary_runs_tells_to_run_the_pipeline(tmp_path, monkeypatch, capsys):
    use_store(monkeypatch, tmp_path, tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["compare"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert "no summary runs" in err and "dvc repro" in err and "dvc exp run" in err
    assert not (tmp_path / "mlflow.db").exists()  # looking must not create a store
    mlflow_log.log_run("prune", params={"a": 1}, metrics={"m": 1.0})  # a store with no summary run
    assert MlflowClient(mlflow_log.tracking_uri()).get_experiment_by_name(mlflow_log.EXPERIMENT)
    with pytest.raises(UserError, match="no summary runs"):
        compare()


def test_cli_stays_light_and_compare_needs_no_tensorflow():
    code = ("import sys, compresslab.cli; assert 'mlflow' not in sys.modules and 'matplotlib' not in "
            "sys.modules, 'cli imports too much'; import compresslab.tools.compare; "
            "assert 'tensorflow' not in sys.modules, 'compare imports tensorflow'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------ seed groups

BF32, BI8, FI8, PI8 = ("baseline", "float32"), ("baseline", "int8"), ("finetune", "int8"), ("pruned", "int8")
# (accuracy, gzip KB, median ms at 1 thread) per file. finetune-int8 is int8's float control (the baseline
# fine-tuned with the same budget, no compression); float32 has no control here. Logged in this order (so
# exp-s2 is the newest run and its group comes first); exp-one is another configuration (sparsity 0.5).
SEEDED = {
    "exp-one": (42, 0.5, {BF32: (0.960, 600, 1.00), BI8: (0.955, 171, 0.40), FI8: (0.958, 170, 0.41),
                          PI8: (0.952, 100, 0.42)}),
    "exp-s3": (3, 0.8, {BF32: (0.958, 600, 1.01), BI8: (0.949, 163, 0.39), FI8: (0.955, 169, 0.42),
                        PI8: (0.943, 58, 0.42)}),
    "exp-s1": (1, 0.8, {BF32: (0.960, 600, 1.00), BI8: (0.955, 165, 0.40), FI8: (0.957, 170, 0.41),
                        PI8: (0.950, 60, 0.43)}),
    "exp-s2": (2, 0.8, {BF32: (0.962, 600, 1.02), BI8: (0.966, 167, 0.41), FI8: (0.960, 171, 0.40),
                        PI8: (0.942, 62, 0.44)}),
}
SEED_RUNS = ["exp-s1", "exp-s2", "exp-s3"]
GROUP = "exp-s1+exp-s2+exp-s3"


def scored_metrics(files: dict) -> dict:
    """`summary_metrics` plus the report stage's scoring: Wilson interval, McNemar vs. baseline-float32 and
    the change against the control of the same mode."""
    metrics = summary_metrics(files)
    for (variant, mode), (accuracy, _, _) in files.items():
        prefix = f"{variant}.{mode}."
        p_value = 1.0 if (variant, mode) == BF32 else 0.03 if accuracy < 0.95 else 0.4
        metrics.update({prefix + "accuracy_ci_low": accuracy - 0.012, prefix + "accuracy_ci_high": accuracy + 0.011,
                        prefix + "test_images": 1000, prefix + "p_value": p_value,
                        prefix + "significant": float(p_value < 0.05)})
        if ("finetune", mode) in files:
            control = files[("finetune", mode)][0]
            metrics[prefix + "accuracy_delta_control_pp"] = (accuracy - control) * 100
    return metrics


@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory):
    """A project root whose mlflow.db holds SEEDED; returns (root, {experiment: run id})."""
    root = tmp_path_factory.mktemp("seeded")
    ids = {}
    with pytest.MonkeyPatch.context() as patch:
        use_store(patch, root, root)
        for name, (seed, sparsity, files) in SEEDED.items():
            patch.setenv("DVC_EXP_NAME", name)
            ids[name] = mlflow_log.log_run("report", params={**params(sparsity), "seed": seed},
                                         metrics=scored_metrics(files), tags={"summary": "true"})
    return root, ids


@pytest.fixture
def seeded(seeded_store, tmp_path, monkeypatch):
    root, ids = seeded_store
    use_store(monkeypatch, root, tmp_path)
    return ids


def over_seeds(file: tuple[str, str], figure: int) -> np.ndarray:
    """One logged value (0: accuracy, 1: KB, 2: ms) of `file` in each run of the seed group."""
    return np.array([SEEDED[name][2][file][figure] for name in SEED_RUNS])


def test_a_seed_group_is_one_row_per_file_with_means_spreads_and_seed_interval(seeded, tmp_path):
    result = compare(out="out")
    table = result.table
    assert result.grouped and result.groups == [SEED_RUNS, ["exp-one"]]
    assert result.varying == ["prune.final_sparsity", "seed"]
    assert len(table) == 8 and list(table.experiment) == [GROUP] * 4 + ["exp-one"] * 4
    for file in (BF32, BI8, FI8, PI8):
        got = row(table, GROUP, *file)
        accuracy, base = over_seeds(file, 0), over_seeds(BF32, 0)
        delta = (accuracy - base) * 100
        assert got.seeds == 3 and got.seed == "1,2,3" and got["prune.final_sparsity"] == "0.8"
        assert got.run_id == ",".join(seeded[name] for name in SEED_RUNS)
        assert got.accuracy == pytest.approx(accuracy.mean())
        assert got.accuracy_std == pytest.approx(accuracy.std(ddof=1))
        half = stats.t.ppf(0.975, df=2) * accuracy.std(ddof=1) / np.sqrt(3)
        assert (got.accuracy_seed_ci_low, got.accuracy_seed_ci_high) == pytest.approx(
            (accuracy.mean() - half, accuracy.mean() + half))
        assert got.accuracy_delta_pp == pytest.approx(delta.mean(), abs=1e-9)
        assert got.accuracy_delta_pp_std == pytest.approx(delta.std(ddof=1), abs=1e-9)
        assert got.gzip_bytes == pytest.approx(over_seeds(file, 1).mean() * KB)
        assert got.gzip_ratio == pytest.approx((over_seeds(file, 1) / over_seeds(BF32, 1)).mean())
        assert got.latency_median_ms == pytest.approx(over_seeds(file, 2).mean()) and got.latency_threads == 1
        if file[1] == "int8":
            control = (accuracy - over_seeds(FI8, 0)) * 100
            assert got.accuracy_delta_control_pp == pytest.approx(control.mean(), abs=1e-9)
        else:
            assert pd.isna(got.accuracy_delta_control_pp)  # no finetune-float32 control was logged
        # One run's Wilson interval and McNemar test do not average: they stay per run, in compare_runs.csv.
        assert got[["accuracy_ci_low", "accuracy_ci_high", "p_value", "significant"]].isna().all()
    one = row(table, "exp-one", *PI8)
    assert one.seeds == 1 and one.seed == "42" and one.accuracy == pytest.approx(0.952)
    assert one[["accuracy_std", "accuracy_seed_ci_low", "accuracy_seed_ci_high",
                "accuracy_delta_pp_std"]].isna().all()  # one sample: its spread is unknown, not zero
    assert (one.accuracy_ci_low, one.accuracy_ci_high) == pytest.approx((0.952 - 0.012, 0.952 + 0.011))
    assert one.p_value == pytest.approx(0.4) and one.significant == 0
    assert one.accuracy_delta_control_pp == pytest.approx((0.952 - 0.958) * 100)
    # The size front is taken on the means: the group's control (170 KB, 95.73 % on average) loses to
    # exp-one's (170 KB, 95.8 %), which is on it; run by run, seed 2's baseline int8 (167 KB, 96.6 %) beats
    # exp-one's control, but on average the group's (165 KB, 95.67 %) no longer does.
    size_front = front(table, "pareto_size")
    assert {f"{GROUP}/pruned-int8", f"{GROUP}/baseline-int8", "exp-one/finetune-int8"} <= size_front
    assert f"{GROUP}/finetune-int8" not in size_front
    assert "exp-one/finetune-int8" not in front(result.runs_table, "pareto_size")
    assert SINGLE_SEED_NOTE not in result.notes
    assert any(note.startswith("2 seed group(s) over 4 runs") and f"{GROUP}: 3 seed(s) (1,2,3)" in note
               for note in result.notes)
    assert "exp-one ran on a single seed: its rows are one sample each, with no spread" in result.notes

    csv = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert len(csv) == 8 and {"seeds", "accuracy_std", "accuracy_seed_ci_low", "accuracy_seed_ci_high",
                              "accuracy_delta_pp_std", "accuracy_ci_low", "accuracy_ci_high", "p_value",
                              "significant", "accuracy_delta_control_pp"} <= set(csv.columns)
    assert list(csv.seeds) == [3] * 4 + [1] * 4 and list(csv.seed) == ["1,2,3"] * 4 + ["42"] * 4
    runs = pd.read_csv(tmp_path / "out" / "compare_runs.csv")
    assert len(runs) == 16 and set(runs.run_id) == set(seeded.values())
    assert list(runs.experiment.drop_duplicates()) == ["exp-s2", "exp-s1", "exp-s3", "exp-one"]  # newest first
    seed2 = runs[(runs.experiment == "exp-s2") & (runs.variant == "pruned")].iloc[0]
    assert seed2.seed == 2 and seed2.accuracy == pytest.approx(0.942) and seed2.p_value == pytest.approx(0.03)
    assert seed2.significant == 1 and seed2.accuracy_ci_high == pytest.approx(0.942 + 0.011)
    assert seed2.accuracy_delta_control_pp == pytest.approx((0.942 - 0.960) * 100)
    png = (tmp_path / "out" / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000


def test_selection_is_on_the_group_means(seeded, tmp_path):
    result = compare(out="out", max_drop=1.2)
    chosen = result.selection.chosen
    assert (chosen["experiment"], chosen["variant"], chosen["mode"]) == ("exp-one", "pruned", "int8")
    # The group's pruned file loses 1.0, 2.0 and 1.5 pp on seeds 1, 2, 3: 1.5 on average, over the limit ...
    assert dict(result.selection.rejected)[f"{GROUP}/pruned-int8"] == "accuracy drop 1.50 pp > 1.20 pp"
    # ... although seed 1's run alone would have qualified and won.
    per_run = select(result.runs_table, 1.2).chosen
    assert (per_run["experiment"], per_run["variant"], per_run["mode"]) == ("exp-s1", "pruned", "int8")
    assert "  one seed only: no spread is known for this file" in selection_lines(result.selection)

    loose = compare(out="out", max_drop=2)
    chosen = loose.selection.chosen
    assert (chosen["experiment"], chosen["variant"], chosen["mode"]) == (GROUP, "pruned", "int8")
    assert chosen["seeds"] == 3 and chosen["gzip_bytes"] == pytest.approx(60 * KB)
    lines = selection_lines(loose.selection)
    assert lines[0].endswith("(means over seeds)")
    assert lines[1] == f"chosen: {GROUP}/pruned-int8: 94.50 % (-1.50 pp), 60.0 KB gzipped, 0.430 ms at 1 thread(s)"
    assert lines[2].startswith("  mean of 3 seeds: accuracy 94.50 ± 0.44 % (95 % seed interval ")
    assert lines[2].endswith("change -1.50 ± 0.50 pp")
    assert not any("within the spread" in line for line in lines)  # 1.5 pp lost, 0.5 pp std: a real drop
    saved = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert saved["chosen"]["params"] == {"prune.final_sparsity": "0.8", "seed": "1,2,3"}
    assert saved["chosen"]["seeds"] == 3
    assert saved["chosen"]["accuracy_std"] == pytest.approx(over_seeds(PI8, 0).std(ddof=1))
    assert saved["chosen"]["accuracy_delta_control_pp"] == pytest.approx(
        ((over_seeds(PI8, 0) - over_seeds(FI8, 0)) * 100).mean())

    # The group's baseline int8 changes by -0.5, +0.4 and -0.9 pp: -0.33 on average, std 0.67.
    tight = compare(out="out", max_drop=0.4).selection
    assert (tight.chosen["experiment"], tight.chosen["variant"], tight.chosen["mode"]) == (GROUP, "baseline",
                                                                                           "int8")
    assert ("  the mean drop is within the spread: |-0.33| pp < 0.67 pp std between seeds, so over seeds this "
            "file is not told apart from baseline-float32") in selection_lines(tight)


def test_cli_prints_groups_and_writes_the_per_run_table(seeded, tmp_path, capsys):
    main(["compare", "--max-drop", "0.4"])
    out = capsys.readouterr().out
    assert out.startswith("compare: 4 run(s) (exp-s2, exp-s1, exp-s3, exp-one) in 2 seed group(s), 8 files; "
                          "params that differ: prune.final_sparsity, seed")
    assert "within the spread" in out and SINGLE_SEED_NOTE not in out
    front_table = out.split("Pareto front")[1].split("selection")[0]
    assert "seeds" in front_table and f"{GROUP}/pruned-int8" in front_table and " ± " in front_table
    assert out.strip().splitlines()[-4:] == [f"wrote {path}" for path in (
        "reports/compare/compare.csv", "reports/compare/compare_runs.csv", "reports/compare/compare.png",
        "reports/compare/selection.json")]


def test_without_a_group_of_two_the_comparison_is_single_seed(seeded, tmp_path):
    assert (tmp_path / compare(out="out").runs_csv_path).is_file()
    result = compare(["exp-one", "exp-s1"], out="out")   # two configurations, one seed each
    assert not result.grouped and result.groups == [["exp-s1"], ["exp-one"]]
    assert SINGLE_SEED_NOTE in result.notes and "seeds" not in result.table.columns
    assert "note: " + SINGLE_SEED_NOTE in summary_lines(result)
    assert len(result.table) == 8 and set(result.table.experiment) == {"exp-one", "exp-s1"}
    # A per-run table left by the grouped comparison before must not outlive it.
    assert result.runs_csv_path is None and not (tmp_path / "out" / "compare_runs.csv").exists()
    assert row(result.table, "exp-s1", *PI8).accuracy_delta_control_pp == pytest.approx((0.950 - 0.957) * 100)


def test_a_repeat_of_a_configuration_and_seed_is_not_counted_as_another_seed(tmp_path, monkeypatch):
    use_store(monkeypatch, tmp_path, tmp_path)
    files = SEEDED["exp-s1"][2]
    for name, seed in (("rep-a", 1), ("rep-b", 1), ("rep-c", 2)):   # rep-b repeats rep-a
        monkeypatch.setenv("DVC_EXP_NAME", name)
        mlflow_log.log_run("report", params={**params(0.8), "seed": seed}, metrics=scored_metrics(files),
                         tags={"summary": "true"})
    result = compare(out="out")
    assert result.groups == [["rep-b", "rep-c"]]   # the newer of the two seed-1 runs, and seed 2
    assert set(result.table.experiment) == {"rep-b+rep-c"} and set(result.table.seeds) == {2}
    assert "rep-a repeats rep-b's configuration and seed: left out" in " ".join(result.notes)


def test_runs_timed_on_different_machines_compare_by_latency_ratio(tmp_path, monkeypatch):
    use_store(monkeypatch, tmp_path, tmp_path)
    # (accuracy, ms, ratio to the run's own baseline-float32 timed interleaved) per file.
    machines = {
        "fast-box": ("CPU A", {("baseline", "float32"): (0.96, 0.10, 1.0), ("pruned", "int8"): (0.955, 0.08, 0.8)}),
        "slow-box": ("CPU B", {("baseline", "float32"): (0.96, 1.00, 1.0), ("pruned", "int8"): (0.955, 0.50, 0.5)})}
    for sparsity, (name, (cpu, files)) in zip((0.5, 0.7), machines.items()):
        monkeypatch.setenv("DVC_EXP_NAME", name)
        metrics = {}
        for (variant, mode), (accuracy, ms, ratio) in files.items():
            prefix = f"{variant}.{mode}."
            metrics.update({prefix + "accuracy": accuracy, prefix + "gzip_bytes": 1000.0,
                            prefix + "latency_median_ms_t1": ms, prefix + "latency_ratio_t1": ratio})
        mlflow_log.log_run("report", params=params(sparsity), metrics=metrics,
                         tags={"summary": "true", "fingerprint.cpu": cpu})
    result = compare(out=tmp_path / "cmp", max_drop=1, objective="latency")
    # In milliseconds the fast machine's file wins; as a ratio, the file that halves its own baseline does.
    assert file_name(result.selection.chosen) == "slow-box/pruned-int8"
    assert any("different machines" in note and "fingerprint.cpu" in note for note in result.notes)
    assert sorted(result.table.loc[result.table.variant == "pruned", "latency_ratio"]) == [0.5, 0.8]


def test_the_plot_draws_seed_intervals_per_experiment_and_the_newest_groups_control_as_a_band(seeded, tmp_path,
                                                                                               monkeypatch):
    result = compare(out="out")
    figures = []
    monkeypatch.setattr(compare_plot, "save_figure", lambda fig, path: figures.append(fig) or path)
    compare_plot.plot_comparison(result.table, tmp_path / "compare.png")
    size_ax, latency_ax = figures[0].axes[:2]
    base = row(result.table, GROUP, *BF32)   # no finetune-float32 was logged: baseline-float32 is the control
    for ax in (size_ax, latency_ax):
        bars = [container for container in ax.containers if isinstance(container, ErrorbarContainer)]
        assert len(bars) == 2   # one per experiment: the seed group (seed interval) and exp-one (Wilson)
        (band,) = [patch for patch in ax.patches
                   if patch.get_transform().contains_branch_seperately(ax.transData)[1]]
        ys = band.get_path().transformed(band.get_patch_transform()).vertices[:, 1]
        assert (min(ys), max(ys)) == pytest.approx((base.accuracy_seed_ci_low * 100, base.accuracy_seed_ci_high * 100))
    labels = [text.get_text() for legend in figures[0].legends for text in legend.get_texts()]
    assert "95 % interval" in labels and f"baseline-float32 of\n{GROUP} 95 % interval:\ninside it, no change" in labels


def test_the_front_names_the_figure_its_quality_columns_hold():
    from compresslab.tools.compare import front_text

    row = {"experiment": "ssd", "variant": "pruned", "mode": "int8", "accuracy": 0.582, "accuracy_delta_pp": -0.45,
           "gzip_bytes": 156000, "latency_median_ms": 1.2, "pareto_size": True, "pareto_latency": False}
    detection = front_text(pd.DataFrame([{**row, "figure": "map"}]))
    classification = front_text(pd.DataFrame([{**row, "figure": "accuracy"}]))
    assert "mAP x100" in detection and "Δ points" in detection and "acc %" not in detection
    assert "acc %" in classification and "Δ pp" in classification and "58.20" in detection


def test_a_detection_choice_is_told_in_map():
    from compresslab.results.selection import Drop
    from compresslab.tools.compare import Selection

    row = {"experiment": "ssd", "variant": "pruned", "mode": "int8", "figure": "map", "accuracy": 0.582,
           "accuracy_delta_pp": -1.88, "gzip_bytes": 156000, "latency_median_ms": 1.2, "latency_threads": 1}
    drop = Drop("finetune-float32", "val", 0.5531, 0.5559, 0.28, 0.582, 0.586, 0.38)
    lines = selection_lines(Selection(1.0, "size", row, [], drop))
    assert lines[0].endswith("within 1 pp of its run's finetune-float32 mAP on the validation split")
    assert "ssd/pruned-int8: mAP 0.5820 (-0.38 pp vs finetune-float32, held-out test)" in lines[1]
    assert "decided on the validation split: mAP 0.5531 (-0.28 pp" in "\n".join(lines)
    classification = selection_lines(Selection(1.0, "size", {**row, "figure": "accuracy"}, [], drop))
    assert "finetune-float32 accuracy on the validation split" in classification[0] and "58.20 %" in classification[1]
