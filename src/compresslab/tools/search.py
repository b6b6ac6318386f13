"""Accuracy-bounded search: the most compressed setting of one knob whose file stays within a drop.

    compresslab search prune.final_sparsity --max-drop 1        # pruned-int8 within 1 pp of the control
    compresslab search cluster.number_of_clusters --max-drop 1 --file cqat-int8 -j 2

Every probe is an ordinary DVC experiment, queued and run by DVC's own queue (`-j N` probes at once): DVC's
run cache restores every stage whose code, data and params it has run before, so a repeated search trains
nothing, and every probe shows in `dvc exp show` and, through the report stage, as an MLflow summary run.
The accuracy is the one the evaluate stage measured on the TFLite file.

This module runs a search and tells its results: which settings to probe comes from `bracketing` (both ends,
then the bracket cut into `jobs + 1` parts per round; the choice passes and is less compressed than every
failing probe), the checked request from `search_request`, the queue from `dvc_queue`, each probe's figures
from `experiments`, and whether a probe passes from `results.selection`, the rule every command shares.
"""

import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compresslab import paths, variants
from compresslab.errors import UserError
from compresslab.results import selection as rule
from compresslab.results.headline import records_from_headline
from compresslab.results.record import by_file
from compresslab.tools.bracketing import Outcome, bracketing_search, outcome_of
from compresslab.tools.dvc_queue import (
    ProbeFailed, queue_experiment, stop_probes, wait_for_idle_workers, wait_for_probes)
from compresslab.tools.experiments import committed_metrics_md5, experiment_metrics
from compresslab.tools.search_request import Request


@dataclass
class Probe:
    """One probed setting and what its file measured.

    The decision is made on `split` ('val' when the evaluate stage measured the validation split, else
    'test'): choosing a setting by its test accuracy and then reporting that accuracy would overstate it.
    decision_accuracy / reference_decision_accuracy / drop_pp are on that split; accuracy /
    reference_accuracy / test_drop_pp are the held-out test figures the choice is reported with.
    """
    value: float | tuple[float, float]   # the knob's setting; a pair in a two-knob search (grid_search)
    experiment: str
    passed: bool
    split: str = "val"
    decision_accuracy: float | None = None
    reference_decision_accuracy: float | None = None
    drop_pp: float | None = None
    accuracy: float | None = None
    reference: str | None = None
    reference_accuracy: float | None = None
    test_drop_pp: float | None = None
    gzip_bytes: int | None = None
    run_id: str | None = None
    seconds: float | None = None


@dataclass
class Search:
    """A finished search: every probe in the order it ran, the outcome, and where it was written."""
    request: Request
    probes: dict[int, Probe] = field(default_factory=dict)
    outcome: Outcome | None = None
    seconds: float = 0.0
    json_path: Path | None = None
    png_path: Path | None = None

    @property
    def chosen(self) -> Probe | None:
        return None if self.outcome is None or self.outcome.chosen is None else self.probes[self.outcome.chosen]


def run(request: Request, *, uri: str | None = None, echo: Callable[[str], None] = print) -> Search:
    """Probe through the DVC queue until the outcome is known; write <out>/<knob>.json and .png.

    Raises:
      UserError: a probe failed (its `dvc queue logs` named), or no probed setting passed (after writing the
        results, which show how far the least compressed setting dropped).
    """
    search = Search(request)
    tag = secrets.token_hex(2)   # DVC experiment names are unique per commit: a nonce keeps searches apart
    started = time.monotonic()
    queued: list[str] = []
    echo(f"search: {request.knob.name} over {_values_text(request)}, {request.file} within "
         f"{request.max_drop:g} pp, at most {request.max_probes} probes, {request.jobs} at a time")

    def probe(indices: list[int]) -> dict[int, bool]:
        names = {index: _experiment_name(request, request.grid[index], tag) for index in indices}
        # A worker of the last round shuts down once the queue is empty; a probe queued while it does is
        # taken from the queue by it and never run (DVC 3.67), so the round starts after it is gone.
        wait_for_idle_workers()
        for index in indices:
            _queue(request, request.grid[index], names[index])
            queued.append(names[index])
        for index, seconds in wait_for_probes(list(names.values()), request.jobs, names):
            found = measure(request, request.grid[index], names[index], uri=uri)
            found.seconds = seconds
            search.probes[index] = found
            echo(_probe_line(search, found))
        return {index: search.probes[index].passed for index in indices}

    try:
        search.outcome = bracketing_search(len(request.grid), probe, jobs=request.jobs,
                                           max_probes=request.max_probes)
    except (KeyboardInterrupt, UserError) as err:
        stop_probes(queued)   # a stopped search must not leave its probes running in the queue's workers
        if isinstance(err, ProbeFailed) and search.probes:
            # What finished is kept: the user narrows --low/--high and the run cache restores those probes.
            search.seconds = time.monotonic() - started
            search.json_path, search.png_path = write(search, stopped=str(err))
            raise UserError(f"{err}; the {len(search.probes)} finished probe(s) are in {search.json_path}: "
                            "narrow --low/--high and search again (their stages come from DVC's run cache)") from err
        raise
    search.seconds = time.monotonic() - started
    search.json_path, search.png_path = write(search)
    if search.chosen is None:
        first = search.probes[0]
        raise UserError(f"no setting keeps {request.file} within {request.max_drop:g} pp: even "
                        f"{request.knob.name}={_text(first.value)} drops {first.drop_pp:.2f} pp ({first.split} "
                        f"split); search a less compressed range or pass a larger --max-drop (probes in "
                        f"{search.json_path})")
    return search


def _experiment_name(request: Request, value: float, tag: str) -> str:
    knob = re.sub(r"[^a-z0-9]+", "-", request.knob.name.split(".")[-1].lower())
    return f"search-{knob}-{_text(value)}-{tag}"


def _text(value: float) -> str:
    return f"{value:g}"


def _values_text(request: Request) -> str:
    grid = request.grid
    order = "higher" if request.knob.higher_compresses else "lower"
    return f"{len(grid)} settings {_text(min(grid))}..{_text(max(grid))} ({order} compresses more)"


def _queue(request: Request, value: float, name: str) -> None:
    queue_experiment(name, [*request.overrides, f"{request.knob.name}={_text(value)}"])


def measure(request: Request, value: float, name: str, *, uri: str | None = None) -> Probe:
    """The probe's figures as DVC recorded them (the experiment's reports/metrics.json, which the evaluate and
    report stages wrote), decided by `results.selection`'s rule, and its MLflow summary run.

    A probe whose setting is the committed one re-runs no stage, so it has no summary run of its own: its
    figures are the commit's, and its run_id that of the newest summary of the commit, if this store has one.
    """
    return decide(request, value, name, experiment_metrics(name), summary_run_id(name, uri=uri))


def decide(request: Request, value: float, name: str, metrics: Mapping, run_id: str | None = None) -> Probe:
    """Whether the probe's file passes: the rule every command shares (`results.selection`), on the figures of
    one reports/metrics.json: the drop against the float control (else the baseline), on the validation split
    (the test split for experiments from before the evaluate stage measured it), test figures beside it."""
    file = variants.split_label(request.file)
    files = by_file(records_from_headline(metrics))
    drop = rule.measure_drop(files, file)
    if drop is None or drop.test is None:
        raise UserError(f"probe {name} has no accuracy for {request.file} next to a float32 reference: check "
                        f"its convert.modes (`dvc exp show`)")
    return Probe(value, name, drop.within(request.max_drop), drop.split, drop.decision, drop.reference_decision,
                 drop.drop_pp, drop.test, drop.reference, drop.reference_test, drop.test_drop_pp,
                 files[file].gzip_bytes, run_id)


def summary_run_id(name: str, *, uri: str | None = None) -> str | None:
    """The MLflow summary run of experiment `name`; for a probe that re-ran nothing, the run that logged the
    committed results (its reports/metrics.json hash, as HEAD's dvc.lock records it); None if none is here."""
    from compresslab.tracking.summaries import SUMMARY_FILTER, summary_store

    store = summary_store(uri)
    if store is None:
        return None
    client, experiment_id = store
    queries = [f"tags.dvc_exp_name = '{name}'"]
    committed = committed_metrics_md5()
    if committed:
        queries.append(f"tags.`dvc.out.{paths.REPORTS}/metrics.json` = '{committed}'")
    for query in queries:
        runs = client.search_runs([experiment_id], f"{SUMMARY_FILTER} and {query}", max_results=1,
                                  order_by=["attributes.start_time DESC"])
        if runs:
            return runs[0].info.run_id
    return None


def _probe_line(search: Search, probe: Probe) -> str:
    verdict = "within" if probe.passed else "beyond"
    size = "" if probe.gzip_bytes is None else f", {probe.gzip_bytes / 1024:.1f} KB gzipped"
    return (f"probe {len(search.probes)}/{search.request.max_probes}: {search.request.knob.name}="
            f"{_text(probe.value)}  {search.request.file} {probe.split} {probe.decision_accuracy * 100:.2f} % "
            f"({rule.pp(-probe.drop_pp, signed=True)} pp vs {probe.reference}): {verdict} "
            f"{search.request.max_drop:g} pp; test {probe.accuracy * 100:.2f} % "
            f"({rule.pp(-probe.test_drop_pp, signed=True)} pp){size}  [{probe.experiment}, "
            f"done {probe.seconds:.0f} s into its round]")


def summary_lines(search: Search) -> list[str]:
    """The closing lines: the choice with its file, size, accuracy and drop, and what to be wary of."""
    request, outcome, chosen = search.request, search.outcome, search.chosen
    lines = [f"chosen: {request.knob.name}={_text(chosen.value)} -> {request.file}: test accuracy "
             f"{chosen.accuracy * 100:.2f} % ({rule.pp(-chosen.test_drop_pp, signed=True)} pp vs {chosen.reference} "
             f"{chosen.reference_accuracy * 100:.2f} %), {chosen.gzip_bytes / 1024:.1f} KB gzipped; experiment "
             f"{chosen.experiment} (`dvc exp apply {chosen.experiment}` restores it)",
             f"  chosen on the {'validation' if chosen.split == 'val' else 'test'} split: "
             f"{chosen.decision_accuracy * 100:.2f} % ({rule.pp(-chosen.drop_pp, signed=True)} pp)"
             + ("; the test split stays held out, so the test figures above are not inflated by the choice"
                if chosen.split == "val" else "; no validation figures in these experiments, so the test "
                "accuracy above took part in the choice and overstates what a new test set would show"),
             f"  {len(search.probes)} probe(s) in {search.seconds:.0f} s"]
    low, high = outcome.bracket
    if high is None:
        lines.append("  the most compressed setting of the range passed: widen the range to compress further")
    elif outcome.exhausted:
        lines.append(f"  probe budget spent: the limit lies between {_text(request.grid[low])} and "
                     f"{_text(request.grid[high])}; pass a larger --max-probes to narrow it")
    for index in outcome.non_monotone:
        lines.append(f"  non-monotone: {request.knob.name}={_text(request.grid[index])} passed although a less "
                     f"compressed setting failed; not chosen (test-set noise, or a real non-monotone effect)")
    return lines + [f"wrote {search.json_path}", f"wrote {search.png_path}"]


# ---------------------------------------------------------------------------------------------- output

def write(search: Search, stopped: str | None = None) -> tuple[Path, Path]:
    """<out>/<knob>.json (the rule, every probe, the outcome) and <out>/<knob>.png (accuracy vs the knob).

    Args:
      stopped: why the search stopped before its outcome (a failed probe): the probes so far are written,
        with no choice.
    """
    from compresslab.outputs import write_json

    request = search.request
    outcome = search.outcome or outcome_of({index: probe.passed for index, probe in search.probes.items()})
    stem = request.out / request.knob.name   # with_suffix would cut a dotted name: add suffixes by hand
    chosen = search.chosen
    json_path = stem.parent / f"{stem.name}.json"
    write_json(json_path, {
        "knob": request.knob.name, "file": request.file, "max_drop_pp": request.max_drop,
        "higher_compresses": request.knob.higher_compresses, "overrides": list(request.overrides),
        "grid": request.grid, "max_probes": request.max_probes, "jobs": request.jobs,
        "strategy": "bracketing search: both ends, then the bracket cut into jobs + 1 parts per round; the "
                    "choice passes and is less compressed than every failing probe",
        "probes": [asdict(probe) for _, probe in sorted(search.probes.items())],
        "chosen": None if chosen is None else asdict(chosen),
        "bracket": [request.grid[i] if i is not None and i >= 0 else None for i in outcome.bracket],
        "non_monotone": [request.grid[i] for i in outcome.non_monotone],
        "budget_spent": outcome.exhausted, "seconds": round(search.seconds, 1),
        **({"stopped": stopped} if stopped else {}),
    })
    return json_path, plot(search, stem.parent / f"{stem.name}.png")


def plot(search: Search, path: Path) -> Path:
    """Accuracy of the file at every probed setting, the bound, and the choice."""
    from matplotlib.figure import Figure

    from compresslab.reporting.plots import save_figure

    request = search.request
    probes = sorted(search.probes.values(), key=lambda probe: probe.value)
    fig = Figure(figsize=(8.0, 4.8), dpi=150, layout="constrained")
    ax = fig.subplots()
    xs = [probe.value for probe in probes]
    split = "validation" if probes[0].split == "val" else "test"
    ax.plot(xs, [probe.decision_accuracy * 100 for probe in probes], color="grey", linewidth=1, zorder=1)
    for passed, colour, marker, name in ((True, "tab:green", "o", "within the bound"),
                                         (False, "tab:red", "x", "beyond the bound")):
        group = [probe for probe in probes if probe.passed == passed]
        ax.scatter([p.value for p in group], [p.decision_accuracy * 100 for p in group], color=colour,
                   marker=marker, s=50, zorder=3, label=f"{split}: {name}")
    if probes[0].split == "val":   # the held-out figures the choice is reported with
        ax.plot(xs, [probe.accuracy * 100 for probe in probes], color="tab:blue", linestyle=":", marker="s",
                markersize=4, markerfacecolor="none", linewidth=1, zorder=2, label="test (held out)")
    bounds = [(probe.reference_decision_accuracy * 100 - request.max_drop) for probe in probes]
    ax.plot(xs, bounds, color="black", linestyle="--", linewidth=1,
            label=f"bound: {probes[0].reference} ({split}) − {request.max_drop:g} pp")
    if search.chosen is not None:
        ax.scatter([search.chosen.value], [search.chosen.decision_accuracy * 100], s=260, marker="*",
                   color="gold", edgecolors="black", zorder=4, label=f"chosen: {_text(search.chosen.value)}")
    for index in search.outcome.non_monotone if search.outcome else ():
        probe = search.probes[index]
        ax.annotate("non-monotone", (probe.value, probe.decision_accuracy * 100), xytext=(6, -12),
                    textcoords="offset points", fontsize=7)
    direction = "→ more compressed" if request.knob.higher_compresses else "← more compressed"
    ax.set_xlabel(f"{request.knob.name} ({direction})")
    ax.set_ylabel(f"{request.file} accuracy (%)")
    ax.set_title(f"Search: {request.file} within {request.max_drop:g} pp ({len(probes)} probes)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
