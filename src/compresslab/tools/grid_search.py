"""Search over two knobs: every setting of their grid probed, the Pareto front of size against validation
accuracy, and the smallest file within --max-drop.

    compresslab search prune.final_sparsity cluster.number_of_clusters --file pcqat-int8 --max-drop 1 \
        --range prune.final_sparsity=0.5:0.8:0.1 --range cluster.number_of_clusters=8:16:8 -j 2

Two knobs trade against each other (more sparsity and fewer clusters both shrink pcqat-int8, and both cost
accuracy), so there is no one direction to bracket: every setting is probed, as an ordinary DVC experiment
through DVC's queue like the one-knob search's probes (a repeat restores every stage from the run cache and
trains nothing). The choice is made by `results.selection`, the rule every command shares: the smallest
file within --max-drop of its run's control on the validation split, ties to the more accurate. The front
shows what each extra byte buys among the settings that pass.
"""

import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compresslab.errors import UserError
from compresslab.results import selection as rule
from compresslab.tools.dvc_queue import ProbeFailed, queue_experiment, stop_probes, wait_for_idle_workers, \
    wait_for_probes
from compresslab.tools.search import Probe, measure
from compresslab.tools.search_request import GridRequest


@dataclass
class GridSearch:
    """A finished grid search: every probe (grid order), the front, the choice and why each other one lost."""
    request: GridRequest
    probes: list[Probe] = field(default_factory=list)
    front: list[Probe] = field(default_factory=list)
    chosen: Probe | None = None
    rejected: dict[str, str] = field(default_factory=dict)   # experiment -> why the rule did not choose it
    seconds: float = 0.0
    json_path: Path | None = None
    png_path: Path | None = None


def run(request: GridRequest, *, uri: str | None = None, echo: Callable[[str], None] = print) -> GridSearch:
    """Probe every setting through the DVC queue, then choose; write <out>/<knob>+<knob>.json and .png.

    Raises:
      UserError: a probe failed (the finished ones are written), or no setting passed (after writing them all).
    """
    search = GridSearch(request)
    tag = secrets.token_hex(2)   # DVC experiment names are unique per commit: a nonce keeps searches apart
    started = time.monotonic()
    settings = request.settings
    names = {index: experiment_name(setting, request, tag) for index, setting in enumerate(settings)}
    echo(f"search: {request.knob_names} over {len(settings)} settings ({len(request.grids[0])} x "
         f"{len(request.grids[1])}), {request.file} within {request.max_drop:g} pp, {request.jobs} at a time")
    found: dict[int, Probe] = {}
    wait_for_idle_workers()
    try:
        for index, setting in enumerate(settings):
            queue_experiment(names[index], [*request.overrides, *assignments(request, setting)])
        for index, seconds in wait_for_probes(list(names.values()), request.jobs, names):
            probe = measure(request, settings[index], names[index], uri=uri)
            probe.seconds = seconds
            found[index] = probe
            echo(probe_line(request, probe, len(found)))
    except (KeyboardInterrupt, UserError) as err:
        stop_probes(list(names.values()))   # a stopped search must not leave its probes running
        if isinstance(err, ProbeFailed) and found:
            search.probes = [found[index] for index in sorted(found)]
            search.seconds = time.monotonic() - started
            search.json_path, search.png_path = write(search, stopped=str(err))
            raise UserError(f"{err}; the {len(found)} finished probe(s) are in {search.json_path}: narrow a "
                            "--range and search again (their stages come from DVC's run cache)") from err
        raise
    search.probes = [found[index] for index in sorted(found)]
    search.seconds = time.monotonic() - started
    search.front = pareto_front([probe for probe in search.probes if probe.passed])
    try:
        chosen, rejected = rule.choose([candidate(probe) for probe in search.probes], request.max_drop,
                                       rule.OBJECTIVES["size"])
    except UserError as err:
        search.json_path, search.png_path = write(search)
        raise UserError(f"{err} (every probe is in {search.json_path})") from None
    search.chosen = next(probe for probe in search.probes if probe.experiment == chosen.name)
    search.rejected = dict(rejected)
    search.json_path, search.png_path = write(search)
    return search


def experiment_name(setting: tuple[float, float], request: GridRequest, tag: str) -> str:
    parts = [f"{knob.name.split('.')[-1].replace('_', '-')}-{value:g}" for knob, value in zip(request.knobs, setting)]
    return f"search-{'-'.join(parts)}-{tag}"


def assignments(request: GridRequest, setting: tuple[float, float]) -> list[str]:
    return [f"{knob.name}={value:g}" for knob, value in zip(request.knobs, setting)]


def candidate(probe: Probe) -> rule.Candidate:
    """A probe as the selection rule sees a file: its drop (validation to decide, test beside) and its size."""
    drop = rule.Drop(probe.reference, probe.split, probe.decision_accuracy, probe.reference_decision_accuracy,
                     probe.drop_pp, probe.accuracy, probe.reference_accuracy, probe.test_drop_pp)
    return rule.Candidate(probe.experiment, drop, probe.gzip_bytes)


def pareto_front(probes: list[Probe]) -> list[Probe]:
    """The probes no other one beats on both size and decision accuracy, smallest first: along the front,
    each larger file is more accurate than every smaller one."""
    front, best = [], float("-inf")
    for probe in sorted(probes, key=lambda p: (p.gzip_bytes, -p.decision_accuracy)):
        if probe.decision_accuracy > best:
            front.append(probe)
            best = probe.decision_accuracy
    return front


def probe_line(request: GridRequest, probe: Probe, done: int) -> str:
    verdict = "within" if probe.passed else "beyond"
    return (f"probe {done}/{len(request.settings)}: {request.setting_text(probe.value)}  {request.file} "
            f"{probe.split} {probe.decision_accuracy * 100:.2f} % ({rule.pp(-probe.drop_pp, signed=True)} pp vs "
            f"{probe.reference}): {verdict} {request.max_drop:g} pp; test {probe.accuracy * 100:.2f} %, "
            f"{probe.gzip_bytes / 1024:.1f} KB gzipped  [{probe.experiment}]")


def summary_lines(search: GridSearch) -> list[str]:
    """The front, the choice with its held-out figures, and where the results are."""
    request, chosen = search.request, search.chosen
    lines = [f"Pareto front of {request.file} within {request.max_drop:g} pp (size against "
             f"{'validation' if chosen.split == 'val' else 'test'} accuracy), smallest first:"]
    lines += [f"  {probe.gzip_bytes / 1024:8.1f} KB  {probe.decision_accuracy * 100:6.2f} %  "
              f"{request.setting_text(probe.value)}" for probe in search.front]
    lines += [f"chosen: {request.setting_text(chosen.value)} -> {request.file}: test accuracy "
              f"{chosen.accuracy * 100:.2f} % ({rule.pp(-chosen.test_drop_pp, signed=True)} pp vs {chosen.reference} "
              f"{chosen.reference_accuracy * 100:.2f} %), {chosen.gzip_bytes / 1024:.1f} KB gzipped; experiment "
              f"{chosen.experiment} (`dvc exp apply {chosen.experiment}` restores it)",
              f"  chosen on the {'validation' if chosen.split == 'val' else 'test'} split: "
              f"{chosen.decision_accuracy * 100:.2f} % ({rule.pp(-chosen.drop_pp, signed=True)} pp); "
              f"{len(search.probes)} probe(s) in {search.seconds:.0f} s",
              f"wrote {search.json_path}", f"wrote {search.png_path}"]
    return lines


# ---------------------------------------------------------------------------------------------- output

def write(search: GridSearch, stopped: str | None = None) -> tuple[Path, Path]:
    """<out>/<knob>+<knob>.json (the rule, every probe, the front, the choice) and .png (the grid, the front)."""
    from compresslab.outputs import write_json

    request = search.request
    stem = request.out / "+".join(knob.name for knob in request.knobs)
    json_path = stem.parent / f"{stem.name}.json"
    write_json(json_path, {
        "knobs": [knob.name for knob in request.knobs], "file": request.file, "max_drop_pp": request.max_drop,
        "grids": [list(grid) for grid in request.grids], "overrides": list(request.overrides),
        "jobs": request.jobs,
        "strategy": "every setting of the grid probed; the choice is the smallest file within --max-drop on the "
                    "decision split (results.selection), ties to the more accurate",
        "probes": [asdict(probe) for probe in search.probes],
        "pareto_front": [probe.experiment for probe in search.front],
        "chosen": None if search.chosen is None else asdict(search.chosen),
        "rejected": search.rejected, "seconds": round(search.seconds, 1),
        **({"stopped": stopped} if stopped else {}),
    })
    return json_path, plot(search, stem.parent / f"{stem.name}.png")


def plot(search: GridSearch, path: Path) -> Path:
    """Left: the probed grid, each setting marked pass or fail with its size. Right: size against decision
    accuracy, the bound, the front and the choice."""
    from matplotlib.figure import Figure

    from compresslab.reporting.plots import save_figure

    request, probes = search.request, search.probes
    fig = Figure(figsize=(12.0, 5.0), dpi=150, layout="constrained")
    grid_ax, front_ax = fig.subplots(1, 2)
    split = "validation" if probes and probes[0].split == "val" else "test"
    for passed, colour, marker, name in ((True, "tab:green", "o", "within the bound"),
                                         (False, "tab:red", "x", "beyond the bound")):
        group = [probe for probe in probes if probe.passed == passed]
        grid_ax.scatter([p.value[0] for p in group], [p.value[1] for p in group], color=colour, marker=marker,
                        s=60, label=name, zorder=3)
        front_ax.scatter([p.gzip_bytes / 1024 for p in group], [p.decision_accuracy * 100 for p in group],
                         color=colour, marker=marker, s=50, label=f"{split}: {name}", zorder=3)
    for probe in probes:
        grid_ax.annotate(f"{probe.gzip_bytes / 1024:.0f} KB\n{probe.decision_accuracy * 100:.1f} %",
                         (probe.value[0], probe.value[1]), xytext=(6, 4), textcoords="offset points", fontsize=7)
    if search.front:
        front_ax.step([p.gzip_bytes / 1024 for p in search.front], [p.decision_accuracy * 100 for p in search.front],
                      where="post", color="tab:green", linewidth=1, label="Pareto front", zorder=2)
    if probes:
        bound = probes[0].reference_decision_accuracy * 100 - request.max_drop
        front_ax.axhline(bound, color="black", linestyle="--", linewidth=1,
                         label=f"bound: {probes[0].reference} ({split}) − {request.max_drop:g} pp")
    if search.chosen is not None:
        chosen = search.chosen
        grid_ax.scatter([chosen.value[0]], [chosen.value[1]], s=260, marker="*", color="gold", edgecolors="black",
                        zorder=4, label="chosen")
        front_ax.scatter([chosen.gzip_bytes / 1024], [chosen.decision_accuracy * 100], s=260, marker="*",
                         color="gold", edgecolors="black", zorder=4, label=f"chosen: {request.setting_text(chosen.value)}")
    for ax, knob in ((grid_ax.set_xlabel, request.knobs[0]), (grid_ax.set_ylabel, request.knobs[1])):
        ax(f"{knob.name} ({'higher' if knob.higher_compresses else 'lower'} compresses more)")
    grid_ax.set_title(f"{len(probes)} settings probed")
    front_ax.set_xlabel(f"{request.file} gzipped size (KB)")
    front_ax.set_ylabel(f"{request.file} {split} accuracy (%)")
    front_ax.set_title(f"{request.file} within {request.max_drop:g} pp: size against accuracy")
    for ax in (grid_ax, front_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)
