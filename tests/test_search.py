"""`compresslab search`: the bracketing strategy on known answers, the up-front checks, and real searches (one
knob, repeated to show that a second search trains nothing, then a grid of two) through DVC's queue and MLflow on
the tiny project."""

import json
import math

import pytest

from compresslab.tools import dvc_queue, search
from compresslab.errors import UserError
from compresslab.tools.bracketing import bracketing_search
from compresslab.tools.dvc_queue import failure_line
from compresslab.tools.grid_search import pareto_front
from compresslab.tools.search_request import plan, plan_grid

from compresslab.tools import sandbox
from conftest import REPO, mlflow_runs, per_variant, read_json, restore_committed, run, stages_ran

TRAINING_STAGES = {"train", "finetune", "prune", "quantize", "pqat", "cluster", "cqat", "pcqat"}


def training_runs(root) -> int:
    return sum(len(mlflow_runs(root, stage=stage)) for stage in TRAINING_STAGES)


def step(limit: int, probed: list[int]):
    """A probe that passes every index up to `limit` and records what it was asked."""
    def probe(indices):
        probed.extend(indices)
        return {index: index <= limit for index in indices}
    return probe


@pytest.mark.parametrize("jobs", [1, 2, 3])
@pytest.mark.parametrize("limit", [0, 1, 6, 11, 12])
def test_the_search_finds_the_last_passing_setting_of_a_monotone_grid(limit, jobs):
    probed = []
    outcome = bracketing_search(13, step(limit, probed), jobs=jobs, max_probes=20)
    assert outcome.chosen == limit
    assert not outcome.exhausted and outcome.non_monotone == []
    assert outcome.bracket == (limit, None if limit == 12 else limit + 1)
    assert len(probed) == len(set(probed))   # no setting probed twice
    # Both ends, then each round shrinks the bracket by a factor of (jobs + 1): far fewer than a grid.
    rounds = math.ceil(math.log(12, jobs + 1))
    assert len(probed) <= 2 + jobs * rounds


def test_the_choice_stays_below_every_failure_and_non_monotone_passes_are_reported():
    passing = {0, 1, 2, 5}   # 5 passes beyond the failure at 3: test-set noise
    outcome = bracketing_search(9, lambda ix: {i: i in passing for i in ix}, jobs=2, max_probes=10)
    assert outcome.chosen == 2
    assert outcome.bracket == (2, 3)
    assert outcome.non_monotone == [5]


def test_a_spent_budget_is_reported_with_the_bracket_left():
    probed = []
    outcome = bracketing_search(21, step(10, probed), jobs=1, max_probes=3)
    assert len(probed) == 3 and outcome.exhausted
    low, high = outcome.bracket
    assert outcome.chosen == low <= 10 < high and high - low > 1


def test_nothing_passes_when_the_least_compressed_setting_fails():
    outcome = bracketing_search(5, step(-1, []), jobs=1, max_probes=8)
    assert outcome.chosen is None


def test_the_grid_runs_from_least_to_most_compressed():
    sparsity = plan("prune.final_sparsity", max_drop=1, low=0.2, high=0.8, resolution=0.2,
                    root=REPO)
    assert sparsity.grid == [0.2, 0.4, 0.6, 0.8] and sparsity.file == "pruned-int8"
    clusters = plan("cluster.number_of_clusters", max_drop=1, low=4, high=16, resolution=4,
                    root=REPO)
    assert clusters.grid == [16, 12, 8, 4] and all(isinstance(value, int) for value in clusters.grid)
    constant = plan("prune.target_sparsity", max_drop=1, root=REPO)
    assert constant.knob.overrides == ("prune=constant",) and constant.grid[0] < constant.grid[-1]
    preset = plan("prune.target_sparsity", max_drop=1, overrides=["experiment=firenet_study"],
                  root=REPO)
    assert preset.overrides == ("prune=constant", "experiment=firenet_study")
    width = plan("model.alpha", max_drop=1, direction="lower", low=0.35, high=1.0, resolution=0.05,
                 file="baseline-int8", overrides=["model=mobilenetv2"], root=REPO)
    assert width.grid[0] == 1.0 and width.grid[-1] == 0.35 and len(width.grid) == 14
    declared = plan("quantize.epochs", max_drop=1, direction="lower", low=1, high=3, resolution=1,
                    file="qat-int8", root=REPO)
    assert declared.grid == [3, 2, 1]


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "prune.nothing"}, "unknown knob prune.nothing"),
    ({"name": "model.name"}, "not a numeric parameter"),
    ({"name": "quantize.epochs"}, "declare it with --direction"),
    ({"max_drop": 0}, "--max-drop must be a positive number"),
    ({"max_drop": -1}, "--max-drop must be a positive number"),
    ({"low": 0.5, "high": 1.0}, "--high 1 is outside prune.final_sparsity's valid values"),
    ({"low": -0.1}, "--low -0.1 is outside"),
    ({"low": 0.8, "high": 0.4}, "--low (0.8) must be below --high (0.4)"),
    ({"resolution": 0}, "--resolution must be > 0"),
    ({"file": "pruned-int3"}, "--file 'pruned-int3' names no file"),
    ({"file": "qat-float16"}, "QAT-trained variants become int8 files only"),
    ({"max_probes": 1}, "--max-probes must be an integer >= 2"),
    ({"jobs": 0}, "-j/--jobs must be an integer >= 1"),
    ({"overrides": ["experiment"]}, "an override is KEY=VALUE"),
    ({"overrides": ["prune.final_sparsity=0.5"]}, "the search sets prune.final_sparsity itself"),
    ({"overrides": ["model=resnet99"]}, "the overrides model=resnet99 do not compose"),
    ({"name": "model.alpha"}, "unknown knob model.alpha"),
    ({"name": "cluster.number_of_clusters", "low": 1}, "--low 1 is outside"),
    ({"name": "cluster.number_of_clusters", "low": 2}, "(>= 3 and <= 1024): pcqat keeps one centroid at zero"),
    ({"name": "cluster.number_of_clusters", "resolution": 1.5}, "must be a whole number"),
])
def test_bad_input_is_one_clear_error_before_any_probe(kwargs, message):
    args = {"name": "prune.final_sparsity", "max_drop": 1.0, "root": REPO, **kwargs}
    with pytest.raises(UserError, match=None) as error:
        plan(args.pop("name"), **args)
    assert message in str(error.value) and "\n" not in str(error.value)


PAIR = ["prune.final_sparsity", "cluster.number_of_clusters"]


def test_a_grid_of_two_knobs_holds_every_pair_from_least_to_most_compressed():
    grid = plan_grid(PAIR, max_drop=1, file="pcqat-int8", root=REPO,
                     ranges=["prune.final_sparsity=0.5:0.8:0.1", "cluster.number_of_clusters=8:16:8"])
    assert grid.grids == ([0.5, 0.6, 0.7, 0.8], [16, 8])
    assert grid.settings[:3] == [(0.5, 16), (0.5, 8), (0.6, 16)] and len(grid.settings) == 8
    assert grid.setting_text((0.5, 16)) == "prune.final_sparsity=0.5, cluster.number_of_clusters=16"
    # The mixed file's size target as a knob clears `bytes`, which the configuration takes instead of a ratio.
    mixed = plan_grid(["prune.final_sparsity", "convert.mixed.ratio"], max_drop=1, file="pruned-mixed", root=REPO,
                      ranges=["prune.final_sparsity=0.8:0.9:0.05", "convert.mixed.ratio=16:24:8"],
                      overrides=["experiment=firenet_smallest"])
    assert mixed.grids == ([0.8, 0.85, 0.9], [16, 24])
    assert mixed.overrides == ("convert.mixed.bytes=null", "experiment=firenet_smallest")


@pytest.mark.parametrize("kwargs, message", [
    ({"names": PAIR[:1] * 2}, "search takes one knob, or two different ones"),
    ({"names": ["prune.final_sparsity", "quantize.epochs"]}, "quantize.epochs is not a known knob"),
    ({"file": None}, "a two-knob search needs --file"),
    ({"ranges": ["prune.final_sparsity=0.5:0.8"]}, "write --range prune.final_sparsity=LOW:HIGH:STEP"),
    ({"ranges": ["model.alpha=1:2:1"]}, "model.alpha is not one of the searched knobs"),
    ({"ranges": ["cluster.number_of_clusters=2:8:2"]}, "--range cluster.number_of_clusters's LOW 2 is outside"),
    ({"ranges": ["prune.final_sparsity=0.1:0.9:0.1", "cluster.number_of_clusters=8:16:8"]}, "the grid holds 18 settings (9 x 2) and --max-probes is 16"),
    ({"file": "pruned-mixed"}, "convert.modes (float32, dynamic, float16, int8, int4, int8_weights) makes no mixed"),
    ({"overrides": ["cluster.number_of_clusters=8"]}, "the search sets cluster.number_of_clusters itself"),
    ({"max_drop": 0}, "--max-drop must be a positive number"),
])
def test_bad_grid_input_is_one_clear_error_before_any_probe(kwargs, message):
    args = {"names": PAIR, "max_drop": 1.0, "file": "pcqat-int8", "root": REPO,
            "ranges": ["prune.final_sparsity=0.5:0.8:0.1", "cluster.number_of_clusters=8:16:8"], **kwargs}
    with pytest.raises(UserError) as error:
        plan_grid(args.pop("names"), **args)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_pareto_front_keeps_the_settings_no_other_beats_on_size_and_accuracy():
    probes = [search.Probe((s, c), f"e{i}", True, decision_accuracy=acc, gzip_bytes=size)
              for i, (s, c, acc, size) in enumerate([(0.5, 16, 0.95, 300), (0.5, 8, 0.94, 200), (0.8, 16, 0.93, 250),
                                                     (0.8, 8, 0.90, 120), (0.9, 8, 0.90, 130)])]
    assert [probe.experiment for probe in pareto_front(probes)] == ["e3", "e1", "e0"]   # e2, e4: beaten by e1, e3


def test_the_command_rejects_bad_input_with_exit_code_2_and_one_line(tmp_path):
    result = run(["compresslab", "search", "prune.final_sparsity", "--max-drop", "0"], REPO, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --max-drop must be a positive number of percentage points (e.g. 1), got 0.0"]
    result = run(["compresslab", "search", "prune.final_sparsity", "--max-drop", "1", "--register", "a/b"], REPO,
                 check=False)
    assert result.returncode == 2 and "--register 'a/b'" in result.stderr
    result = run(["compresslab", "search", *PAIR, "--file", "pcqat-int8", "--max-drop", "1", "--low", "0.2"], REPO,
                 check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --low is for one knob: give each of two knobs its range with --range KNOB=LOW:HIGH:STEP"]


@pytest.mark.slow(minutes=8)
def test_a_search_through_the_dvc_queue_respects_its_bound_and_a_repeat_trains_nothing(project):
    """The tiny project's probes are real DVC experiments with MLflow summaries; the second search is cached."""
    restore_committed(project)
    # The range ends at the committed setting (0.5): that probe re-runs no stage and logs no summary of its own.
    command = ["compresslab", "search", "prune.final_sparsity", "--max-drop", "45", "--low", "0.1", "--high", "0.5",
               "--resolution", "0.1", "--max-probes", "3", "-j", "2", "--register", "tiny-search"]
    first = run(command, project, timeout=1500)
    result = read_json(project / "reports" / "search" / "prune.final_sparsity.json")
    probes = result["probes"]
    assert 2 <= len(probes) <= 4 and {0.1, 0.5} <= {probe["value"] for probe in probes}
    assert first.stdout.count("\nprobe ") == len(probes)
    chosen = result["chosen"]
    assert chosen["passed"] and chosen["drop_pp"] <= 45 + 1e-9
    assert "chosen on the validation split" in first.stdout
    # The rule: every probed setting below the choice passed, the failure that bounds it lies above it.
    assert all(probe["passed"] for probe in probes if probe["value"] < chosen["value"])
    failures = [probe["value"] for probe in probes if not probe["passed"]]
    assert all(value > chosen["value"] for value in failures)
    if failures and not result["budget_spent"]:
        assert min(failures) == pytest.approx(chosen["value"] + 0.1)   # narrowed to one grid step
    for probe in probes:   # decided on the validation split; the test figures are reported beside it
        assert probe["split"] == "val"
        assert probe["drop_pp"] == pytest.approx(
            (probe["reference_decision_accuracy"] - probe["decision_accuracy"]) * 100)
        assert probe["test_drop_pp"] == pytest.approx((probe["reference_accuracy"] - probe["accuracy"]) * 100)
        assert probe["passed"] == (probe["drop_pp"] <= 45 + 1e-9)
        assert probe["reference"] == "finetune-float32"
    # Every probe is a DVC experiment with an MLflow summary run of its figures: its own, or for the committed
    # setting the workspace run that logged the committed results.
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    names = {exp["name"] for rev in shown for exp in rev.get("experiments") or []}
    assert {probe["experiment"] for probe in probes} <= names
    summaries = {r.info.run_id: r for r in mlflow_runs(project, summary="true")}
    for probe in probes:
        summary = summaries[probe["run_id"]]
        expected = "workspace" if probe["value"] == 0.5 else probe["experiment"]
        assert summary.data.tags["dvc_exp_name"] == expected
        assert float(summary.data.params["prune.final_sparsity"]) == pytest.approx(probe["value"])
        # The probe reads DVC's record (reports/metrics.json, 4 decimals); MLflow holds the same figure.
        assert summary.data.metrics["pruned.int8.accuracy"] == pytest.approx(probe["accuracy"], abs=5e-5)
        assert summary.data.metrics["pruned.int8.val_accuracy"] == pytest.approx(probe["decision_accuracy"],
                                                                                 abs=5e-5)
    assert f"chosen: prune.final_sparsity={chosen['value']:g} -> pruned-int8" in first.stdout
    assert (project / "reports" / "search" / "prune.final_sparsity.png").stat().st_size > 10_000
    assert "registered pruned-int8.tflite as tiny-search version 1" in first.stdout

    trained = training_runs(project)
    second = run(command, project, timeout=900)
    again = read_json(project / "reports" / "search" / "prune.final_sparsity.json")
    assert [(p["value"], p["accuracy"], p["decision_accuracy"]) for p in again["probes"]] == \
        [(p["value"], p["accuracy"], p["decision_accuracy"]) for p in probes]
    assert again["chosen"]["value"] == chosen["value"]
    assert training_runs(project) == trained
    assert "registered pruned-int8.tflite as tiny-search version 2" in second.stdout
    assert "champion moved from version 1 to version 2" in second.stdout   # same size: the newer one


@pytest.mark.slow(minutes=2)
def test_cluster_count_change_reruns_only_the_clustering_branch(project):
    """`dvc exp run -S cluster.number_of_clusters=4` re-runs the clustering branch alone. In this module rather
    than test_pipeline's: the two-knob search below then finds its clusters=4 stages in the run cache."""
    restore_committed(project)
    result = run(["dvc", "exp", "run", "-S", "cluster.number_of_clusters=4", "-n", "clusters4"], project)
    assert set(stages_ran(result.stdout)) == {"cluster", "cqat", "pcqat", *per_variant("clustered", "cqat", "pcqat"),
                                              "report"}
    assert read_json(project / "reports/cluster/metrics.json")["max_unique_values"] <= 4


@pytest.mark.slow(minutes=4)
def test_a_two_knob_search_probes_its_grid_through_the_queue(project):
    """Sparsity x clusters for pcqat-int8 (the file both change): every pair a DVC experiment with an MLflow
    summary, the front and the choice by the shared rule."""
    restore_committed(project)
    # Only pcqat at (0.1, 4) trains: the one-knob search above trained both sparsities at the preset's 8
    # clusters, and the test above 4 clusters at the committed sparsity (0.5), all in the run cache.
    command = ["compresslab", "search", *PAIR, "--file", "pcqat-int8", "--max-drop", "60", "-j", "1",
               "--range", "prune.final_sparsity=0.1:0.5:0.4", "--range", "cluster.number_of_clusters=4:8:4"]
    first = run(command, project, timeout=1500)
    result = read_json(project / "reports" / "search" / "prune.final_sparsity+cluster.number_of_clusters.json")
    probes = result["probes"]
    assert [tuple(probe["value"]) for probe in probes] == [(0.1, 8), (0.1, 4), (0.5, 8), (0.5, 4)]
    assert first.stdout.count("\nprobe ") == 4
    for probe in probes:
        assert probe["split"] == "val" and probe["reference"] == "finetune-float32"
        assert probe["passed"] == (probe["drop_pp"] <= 60 + 1e-9)
    passing = [probe for probe in probes if probe["passed"]]
    chosen = result["chosen"]
    assert chosen["passed"] and chosen["gzip_bytes"] == min(probe["gzip_bytes"] for probe in passing)
    # The front runs from the choice up, each larger file more accurate; every other passing setting is beaten
    # by a front member at least as small and as accurate.
    front = [next(p for p in probes if p["experiment"] == name) for name in result["pareto_front"]]
    assert front[0]["experiment"] == chosen["experiment"]
    assert all(a["gzip_bytes"] <= b["gzip_bytes"] and a["decision_accuracy"] < b["decision_accuracy"]
               for a, b in zip(front, front[1:]))
    for probe in passing:
        assert probe in front or any(f["gzip_bytes"] <= probe["gzip_bytes"] and
                                     f["decision_accuracy"] >= probe["decision_accuracy"] for f in front)
    # Sizes differ across the grid: both knobs reach the file.
    sizes = {tuple(probe["value"]): probe["gzip_bytes"] for probe in probes}
    assert sizes[(0.5, 4)] < sizes[(0.1, 4)] and sizes[(0.1, 4)] < sizes[(0.1, 8)]
    summaries = {r.info.run_id: r for r in mlflow_runs(project, summary="true")}
    for probe in probes:
        summary = summaries[probe["run_id"]]
        assert float(summary.data.params["prune.final_sparsity"]) == pytest.approx(probe["value"][0])
        assert int(summary.data.params["cluster.number_of_clusters"]) == probe["value"][1]
        assert summary.data.metrics["pcqat.int8.val_accuracy"] == pytest.approx(probe["decision_accuracy"],
                                                                                abs=5e-5)
    setting = f"prune.final_sparsity={chosen['value'][0]:g}, cluster.number_of_clusters={chosen['value'][1]}"
    assert "Pareto front of pcqat-int8 within 60 pp" in first.stdout
    assert f"chosen: {setting} -> pcqat-int8" in first.stdout
    assert (project / "reports" / "search" / "prune.final_sparsity+cluster.number_of_clusters.png").stat().st_size \
        > 10_000
    # A repeat trains nothing: the one-knob search above checks it through the same queue and run cache.


@pytest.mark.slow
def test_queue_state_reads_each_queued_probe_and_the_live_workers(tmp_path):
    """Read from a real DVC queue (a one-stage project): each experiment by name, and no worker before one is
    started."""
    root = tmp_path / "queue"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages:\n  hello:\n    cmd: echo hello > hello.txt\n    outs: [hello.txt]\n")
    sandbox.init_git(root)
    run(["dvc", "init", "-q"], root)
    sandbox.commit_all(root, "one stage")
    for name in ("probe-a", "probe-b"):
        run(["dvc", "exp", "run", "--queue", "-n", name], root)
    assert dvc_queue.queue_state(root) == ({"probe-a": "Queued", "probe-b": "Queued"}, 0)
    with pytest.raises(UserError, match="reading DVC's experiment queue failed"):
        dvc_queue.queue_state(tmp_path)   # not a DVC repository


def test_a_probe_left_without_a_worker_restarts_the_workers_once_then_fails_with_the_fix(monkeypatch):
    """What DVC 3.67 did once: a worker shut down on an empty queue as the next probe was queued, and the
    probe stayed 'Running' with no worker. The search must not wait for it forever."""
    starts = []
    monkeypatch.setattr(dvc_queue, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(dvc_queue, "start_workers", starts.append)
    monkeypatch.setattr(dvc_queue, "queue_state", lambda: ({"probe-a": "Running"}, 0))
    with pytest.raises(UserError, match=r"no worker left for probe\(s\) probe-a \(Running\): run the search again"):
        list(dvc_queue.wait_for_probes(["probe-a"], 1, {3: "probe-a"}))
    assert starts == [1, 1]  # the round's start, then one restart
    states = iter([({"probe-a": "Queued"}, 0)] * (dvc_queue.STALLED_POLLS + 1) + [({"probe-a": "Success"}, 1)])
    monkeypatch.setattr(dvc_queue, "queue_state", lambda: next(states))
    starts.clear()
    assert [index for index, _ in dvc_queue.wait_for_probes(["probe-a"], 2, {3: "probe-a"})] == [3]
    assert starts == [1, 1]  # a restart got the queued probe going


def test_a_failed_probe_is_told_by_its_stage_s_own_error_line():
    ours = ("Running stage 'cluster':\n> python stages/cluster.py\nE0000 cuInit failed\nerror: layer 'dense' has 384 "
            "kernel weights, not more than cluster.number_of_clusters=400: lower number_of_clusters\n"
            "ERROR: failed to reproduce 'cluster': failed to run: python stages/cluster.py, exited with 2\n")
    assert failure_line(ours, "probe-a") == ("stage cluster: layer 'dense' has 384 kernel weights, not more "
                                             "than cluster.number_of_clusters=400: lower number_of_clusters")
    library = ("Traceback (most recent call last):\n  File \"x.py\", line 1\ntensorflow.python.framework.errors_impl."
               "InvalidArgumentError: Expected num_to_sample <= points.rows(). 5 vs 4.\n"
               "ERROR: failed to reproduce 'pcqat': failed to run: python stages/pcqat.py, exited with 1\n")
    assert failure_line(library, "probe-a").startswith("stage pcqat: tensorflow.python.framework.errors_impl."
                                                       "InvalidArgumentError: Expected num_to_sample")
    assert failure_line("", "probe-a") == "see `dvc queue logs probe-a`"


def test_a_failed_probe_keeps_the_finished_ones_in_the_results_and_clears_the_queue(monkeypatch, tmp_path):
    request = plan("prune.final_sparsity", max_drop=1.0, low=0.5, high=0.9, resolution=0.1, root=REPO,
                   out=tmp_path)
    queued, stopped = [], []
    # search.run looks the queue driver's functions up in its own namespace: patch them there.
    monkeypatch.setattr(search, "wait_for_idle_workers", lambda: None)
    monkeypatch.setattr(search, "_queue", lambda request, value, name: queued.append(name))
    monkeypatch.setattr(search, "stop_probes", stopped.extend)

    def wait(names, jobs, indices):  # the first probe finishes, the second fails in its pcqat stage
        yield 0, 12.0
        raise dvc_queue.ProbeFailed(f"probe {names[1]} failed: stage pcqat: cluster.number_of_clusters=2 is too few")

    monkeypatch.setattr(search, "wait_for_probes", wait)
    monkeypatch.setattr(search, "measure", lambda request, value, name, uri=None: search.Probe(
        value, name, True, decision_accuracy=0.9, reference_decision_accuracy=0.9, drop_pp=0.0, accuracy=0.9,
        reference="finetune-float32", reference_accuracy=0.9, test_drop_pp=0.0, gzip_bytes=1000))
    with pytest.raises(UserError) as error:
        search.run(request, echo=lambda line: None)
    message = str(error.value)
    assert "stage pcqat: cluster.number_of_clusters=2 is too few" in message and "\n" not in message
    assert "the 1 finished probe(s) are in" in message and "narrow --low/--high" in message
    assert stopped == queued and len(queued) == 2
    written = read_json(tmp_path / "prune.final_sparsity.json")
    assert [probe["value"] for probe in written["probes"]] == [0.5]
    assert written["chosen"] is None and "stage pcqat" in written["stopped"]
    assert (tmp_path / "prune.final_sparsity.png").is_file()


@pytest.mark.slow(minutes=2)
def test_a_probe_that_fails_in_a_stage_stops_the_search_with_that_stage_s_line_and_an_empty_queue(project):
    restore_committed(project)
    # 400 clusters are more than the tiny FireNet's smallest kernel holds: the clustering stage refuses it.
    failed = run(["compresslab", "search", "cluster.number_of_clusters", "--max-drop", "50", "--low", "8",
                  "--high", "400", "--resolution", "8", "--max-probes", "2", "-j", "1"], project, check=False,
                 timeout=900)
    assert failed.returncode == 2, failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("error: probe search-number-of-clusters-400-") and "failed: stage " in line
    assert "not more than cluster.number_of_clusters=400" in line
    status, _ = dvc_queue.queue_state(project)
    assert not [name for name, state in status.items()
                if name.startswith("search-number-of-clusters-") and state in ("Queued", "Running", "Failed")]
