"""One rule for `compare --max-drop` and `search --max-drop`: the same runs, the same decisions.

Three runs of a pruning sweep share a baseline (test 96.00 %, validation 95.00 %) and a float control
(96.50 %, 95.80 %) and differ in pruned-int8:

    sparsity  test     val      gzip    vs the control on val    vs baseline-float32 on test (the old compare)
    0.5       96.20 %  95.40 %  300 KB  -0.40 pp: within 1 pp    +0.20 pp
    0.7       95.60 %  94.60 %  200 KB  -1.20 pp: beyond         -0.40 pp: within, and smaller
    0.9       93.00 %  92.00 %  100 KB  -3.80 pp: beyond         -3.00 pp

Measured against the baseline on the test split, 0.7 would win; by the rule, 0.5 does, in both commands.
"""

import pytest

from compresslab.tools import search
from compresslab.tools.bracketing import bracketing_search
from compresslab.tools.search_request import plan
from compresslab.tools.compare import compare, selection_lines
from compresslab.results import selection as rule
from compresslab.results.headline import headline_metrics
from compresslab.results.record import Record
from compresslab.results.summary import summary_metrics
from compresslab.tracking import mlflow_log

from conftest import REPO

KB = 1024
PRUNED = {0.5: (0.962, 0.954, 300), 0.7: (0.956, 0.946, 200), 0.9: (0.930, 0.920, 100)}


def run_records(sparsity: float, *, control: bool = True, validation: bool = True) -> list[Record]:
    """One run's files as the report stage records them."""
    files = [("baseline", 0.960, 0.950, 2000), *([("finetune", 0.965, 0.958, 2000)] if control else []),
             ("pruned", *PRUNED[sparsity])]
    return [Record(variant, "float32" if variant != "pruned" else "int8", accuracy=accuracy,
                   val_accuracy=val if validation else None, gzip_bytes=kb * KB)
            for variant, accuracy, val, kb in files]


def experiment(sparsity: float) -> str:
    return f"sweep-{sparsity:g}"


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    """Every run logged as the report stage logs its summary, into a real SQLite store; returns its URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    return uri


def log_sweep(monkeypatch, **kwargs) -> None:
    for sparsity in PRUNED:
        monkeypatch.setenv("DVC_EXP_NAME", experiment(sparsity))
        mlflow_log.log_run("report", params={"prune": {"final_sparsity": sparsity}, "seed": 42},
                         metrics=summary_metrics(run_records(sparsity, **kwargs)), tags={"summary": "true"})


def probes(max_drop: float, **kwargs) -> dict[float, search.Probe]:
    """search's decision on each run, from the reports/metrics.json the same records give."""
    request = plan("prune.final_sparsity", max_drop=max_drop, low=0.5, high=0.9, resolution=0.2, root=REPO)
    assert request.grid == list(PRUNED)
    return {value: search.decide(request, value, experiment(value), headline_metrics(run_records(value, **kwargs)))
            for value in request.grid}


def search_choice(found: dict[float, search.Probe]) -> float | None:
    grid = list(found)
    outcome = bracketing_search(len(grid), lambda ix: {i: found[grid[i]].passed for i in ix}, jobs=1,
                                max_probes=len(grid))
    return None if outcome.chosen is None else grid[outcome.chosen]


def test_compare_and_search_choose_the_same_file_by_validation_accuracy_against_the_control(sweep, monkeypatch):
    log_sweep(monkeypatch)
    found = probes(1.0)
    result = compare(out="out", max_drop=1.0)
    table = result.table.set_index(["experiment", "variant", "mode"])
    for value, probe in found.items():
        row = table.loc[(experiment(value), "pruned", "int8")]
        assert (row.reference, row.split) == (probe.reference, probe.split) == ("finetune-float32", "val")
        assert row.drop_pp == pytest.approx(probe.drop_pp) and row.test_drop_pp == pytest.approx(probe.test_drop_pp)
        assert rule.within(row.drop_pp, 1.0) == probe.passed
    assert [value for value, probe in found.items() if probe.passed] == [0.5]
    chosen = result.selection.chosen
    assert (chosen["experiment"], chosen["variant"], chosen["mode"]) == (experiment(search_choice(found)), "pruned",
                                                                         "int8") == ("sweep-0.5", "pruned", "int8")
    rejected = dict(result.selection.rejected)
    # 0.7 is within 1 pp of the baseline on the test split, and smaller: the old compare rule would have taken it.
    assert rejected["sweep-0.7/pruned-int8"] == "validation accuracy drop 1.20 pp > 1.00 pp (held-out test: 0.90 pp)"
    lines = selection_lines(result.selection)
    assert lines[0] == "selection: the smallest file within 1 pp of its run's finetune-float32 accuracy on the " \
                       "validation split"
    assert lines[1].startswith("chosen: sweep-0.5/pruned-int8: 96.20 % (-0.30 pp vs finetune-float32, held-out "
                               "test), 300.0 KB gzipped")
    assert "  decided on the validation split: 95.40 % (-0.40 pp vs finetune-float32); the test figures above " \
           "are held out, so the choice does not inflate them" in lines
    assert result.selection.rule == "the smallest file within 1 pp of its run's finetune-float32 on the validation split"


def test_a_looser_drop_moves_both_commands_to_the_same_smaller_file(sweep, monkeypatch):
    log_sweep(monkeypatch)
    found = probes(1.5)
    chosen = compare(out="out", max_drop=1.5).selection.chosen
    assert search_choice(found) == 0.7 and chosen["experiment"] == "sweep-0.7"


def test_runs_without_a_control_or_validation_figures_are_decided_on_the_baseline_s_test_split_by_both(
        sweep, monkeypatch):
    log_sweep(monkeypatch, control=False, validation=False)
    found = probes(1.0, control=False, validation=False)
    result = compare(out="out", max_drop=1.0)
    assert {(probe.reference, probe.split) for probe in found.values()} == {("baseline-float32", "test")}
    assert [value for value, probe in found.items() if probe.passed] == [0.5, 0.7]
    assert result.selection.chosen["experiment"] == experiment(search_choice(found)) == "sweep-0.7"
    assert "reference" not in result.table.columns   # accuracy_delta_pp already says what the rule read
    assert any(line.startswith("  decided on the test split (pp vs baseline-float32): these runs hold no "
                               "validation figures") for line in selection_lines(result.selection))


def test_the_rule_never_chooses_a_float32_reference_and_tolerates_float_noise():
    files = {("baseline", "float32"): {"accuracy": 0.96}, ("finetune", "float32"): {"accuracy": 0.96},
             ("pruned", "int8"): {"accuracy": 0.95}}
    drop = rule.measure_drop(files, ("pruned", "int8"))
    assert drop.reference == "finetune-float32" and drop.split == "test"
    assert drop.drop_pp == pytest.approx(1.0) and drop.drop_pp > 1.0 and drop.within(1.0)   # 1.0000000000000009
    assert rule.is_reference("baseline", "float32") and rule.is_reference("finetune", "float32")
    assert not rule.is_reference("finetune", "int8")
    assert rule.measure_drop({("pruned", "int8"): {"accuracy": 0.9}}, ("pruned", "int8")) is None


def test_latency_is_ranked_by_the_interleaved_ratio_and_milliseconds_only_when_no_row_has_one():
    assert rule.cost_figure([{"latency_ratio": 0.5}, {"latency_ratio": None}], "latency") == "latency_ratio"
    assert rule.cost_figure([{"latency_median_ms": 0.4}], "latency") == "latency_median_ms"
    assert rule.latency_note("latency_median_ms") and not rule.latency_note("latency_ratio")
    assert rule.cost_figure([{"latency_ratio": 0.5}], "size") == "gzip_bytes"
    with pytest.raises(Exception, match="--objective must be one of size, latency"):
        rule.cost_figure([], "speed")


@pytest.mark.parametrize("value, signed, text", [(1.004, False, "1.00"), (-1e-15, True, "+0.00"),
                                                 (-1e-15, False, "0.00"), (-0.666, True, "-0.67")])
def test_points_print_with_two_decimals_and_never_as_minus_zero(value, signed, text):
    assert rule.pp(value, signed=signed) == text
