"""`compresslab compare` on a real MLflow SQLite store holding hand-made summary runs with known answers.

Three experiments of a pruning sweep (exp-a/b/c: prune.final_sparsity 0.5/0.8/0.9) share one baseline
(float32: 96.0 %, 600 KB; int8: 95.5 %, 170 KB) and differ in their pruned files:

    exp   pruned-float32              pruned-int8
    a     95.8 % (-0.2 pp), 350 KB    95.2 % (-0.8 pp), 100 KB
    b     95.0 % (-1.0 pp), 200 KB    94.5 % (-1.5 pp),  60 KB
    c     93.0 % (-3.0 pp), 150 KB    91.69 % (-4.31 pp), 40 KB

A stale exp-a run (another model) is logged before the real one, and a non-summary run after them all.
"""

import json
import subprocess
import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from compresslab import tracking
from compresslab.cli import main
from compresslab.reporting.compare import compare, select
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
    """The metrics the evaluate stage logs, `<variant>.<mode>.<figure>`, at 1 and 2 threads."""
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


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project root whose mlflow.db holds the runs; returns (root, {experiment: newest run id})."""
    root = tmp_path_factory.mktemp("project")
    ids = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        patch.setenv("DVC_ROOT", str(root))
        patch.chdir(root)
        patch.setenv("DVC_EXP_NAME", "exp-a")
        stale = {key: value - 0.1 if key.endswith("accuracy") else value
                 for key, value in summary_metrics(FILES["exp-a"]).items()}
        tracking.log_run("evaluate", params=params(0.5, model="mlp"), metrics=stale,
                         tags={"summary": "true"}, run_name="exp-a: mlp")
        for name in SPARSITY:
            patch.setenv("DVC_EXP_NAME", name)
            ids[name] = tracking.log_run("evaluate", params=params(SPARSITY[name]),
                                         metrics=summary_metrics(FILES[name]), tags={"summary": "true"},
                                         run_name=f"{name}: firenet")
        tracking.log_run("prune", params=params(0.95), metrics={"pruned.int8.accuracy": 0.99})
    return root, ids


@pytest.fixture
def project(store, tmp_path, monkeypatch):
    """Run in a fresh working folder whose tracking URI is the shared store; returns the run ids."""
    root, ids = store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.chdir(tmp_path)
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
        "experiment", "run_id", "prune.final_sparsity", "variant", "mode", "accuracy", "accuracy_delta_pp",
        "gzip_bytes", "gzip_ratio", "latency_median_ms", "latency_threads", "pareto_size", "pareto_latency"]
    assert len(table) == 12
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
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["compare"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert "no summary runs" in err and "dvc repro" in err and "dvc exp run" in err
    assert not (tmp_path / "mlflow.db").exists()  # looking must not create a store
    tracking.log_run("prune", params={"a": 1}, metrics={"m": 1.0})  # a store with no summary run
    assert MlflowClient(tracking.tracking_uri()).get_experiment_by_name(tracking.EXPERIMENT)
    with pytest.raises(UserError, match="no summary runs"):
        compare()


def test_cli_stays_light_and_compare_needs_no_tensorflow():
    code = ("import sys, compresslab.cli; assert 'mlflow' not in sys.modules and 'matplotlib' not in "
            "sys.modules, 'cli imports too much'; import compresslab.reporting.compare; "
            "assert 'tensorflow' not in sys.modules, 'compare imports tensorflow'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
