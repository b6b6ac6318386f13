"""Accuracy-bounded search: the most compressed setting of one knob whose file stays within a drop.

    compresslab search prune.final_sparsity --max-drop 1        # pruned-int8 within 1 pp of the control
    compresslab search cluster.number_of_clusters --max-drop 1 --file cqat-int8 -j 2

Every probe is an ordinary DVC experiment, queued and run by DVC's own queue (`-j N` probes at once): DVC's
run cache restores every stage whose code, data and params it has run before, so a repeated search trains
nothing, and every probe shows in `dvc exp show` and, through the report stage, as an MLflow summary run.
The accuracy is the one the evaluate stage measured on the TFLite file.

Strategy: the knob's range is a grid (low, low + resolution, ..., high). The least and the most compressed
ends are probed first; then the bracket between the most compressed passing setting and the least compressed
failing one is cut into `jobs + 1` parts, one probe per cut (plain bisection with one job), until the
bracket is one grid step wide or `max_probes` is spent. Accuracy on a small test set is not monotone in
compression, so the rule is conservative: the choice is the most compressed probed setting that passes *and*
is less compressed than every failing probe; passing probes beyond a failure are reported as non-monotone,
never chosen.
"""

import json
import math
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from compresslab import paths, variants
from compresslab.errors import UserError
from compresslab.results import selection as rule
from compresslab.results.headline import records_from_headline
from compresslab.results.record import by_file

OUT_DIR = paths.REPORTS / "search"
POLL_SECONDS = 3.0
# Polls with probes pending and no queue worker alive before the search starts the workers again (once), then
# gives up, rather than wait forever for a probe that nobody will run (see `_wait_for_idle_workers`).
STALLED_POLLS = 10


@dataclass(frozen=True)
class Knob:
    """A searchable parameter: which way compresses, what it may be, where to search by default.

    higher_compresses: whether a larger value is the more compressed setting (sparsity: yes; clusters: no).
    valid: the closed interval of values every stage of a probe accepts (math.inf for no upper bound);
      open_high excludes the top; why_valid says why, where the reason is not plain.
    overrides: other `-S` overrides every probe needs (e.g. the constant schedule for target_sparsity).
    """
    name: str
    higher_compresses: bool
    low: float
    high: float
    resolution: float
    file: str
    valid: tuple[float, float] = (-math.inf, math.inf)
    open_high: bool = False
    integer: bool = False
    overrides: tuple[str, ...] = ()
    why_valid: str = ""


KNOBS = {knob.name: knob for knob in (
    Knob("prune.final_sparsity", True, 0.1, 0.95, 0.05, "pruned-int8", (0.0, 1.0), open_high=True),
    Knob("prune.target_sparsity", True, 0.1, 0.95, 0.05, "pruned-int8", (0.0, 1.0), open_high=True,
         overrides=("prune=constant",)),
    # Plain clustering takes 2, but every probe runs pcqat too, which pins one centroid at zero.
    Knob("cluster.number_of_clusters", False, 3, 64, 1, "clustered-int8", (3, 1024), integer=True,
         why_valid="pcqat keeps one centroid at zero and needs two more; cqat keeps at most 1024"),
)}


# ------------------------------------------------------------------------------------------- strategy

@dataclass
class Probe:
    """One probed setting and what its file measured.

    The decision is made on `split` ('val' when the evaluate stage measured the validation split, else
    'test'): choosing a setting by its test accuracy and then reporting that accuracy would overstate it.
    decision_accuracy / reference_decision_accuracy / drop_pp are on that split; accuracy /
    reference_accuracy / test_drop_pp are the held-out test figures the choice is reported with.
    """
    value: float
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
class Outcome:
    """Where the search ended: `chosen` is a grid index (None when nothing passed), `bracket` the indices
    between which the answer lies, `non_monotone` passing indices beyond a failure."""
    chosen: int | None
    bracket: tuple[int, int | None]
    non_monotone: list[int]
    exhausted: bool


def bracketing_search(grid_size: int, probe: Callable[[list[int]], dict[int, bool]], *, jobs: int,
                      max_probes: int) -> Outcome:
    """Search indices 0..grid_size-1 (least to most compressed) for the most compressed passing one.

    Args:
      grid_size: how many settings the grid holds (>= 2).
      probe: runs the given indices (at once) and returns whether each passed.
      jobs: probes per round after the first.
      max_probes: the most indices probed in all.

    Returns:
      The Outcome; `exhausted` when max_probes ran out before the bracket was one step wide.
    """
    results: dict[int, bool] = {}
    results.update(probe([0, grid_size - 1][:max_probes]))
    while True:
        outcome = _outcome(results)
        low, high = outcome.bracket
        if outcome.chosen is None or high is None or high - low <= 1:
            return outcome
        budget = max_probes - len(results)
        if budget <= 0:
            outcome.exhausted = True
            return outcome
        count = min(jobs, budget, high - low - 1)
        # Cut the bracket into count + 1 equal parts: bisection with one job, k-section with k.
        cuts = sorted({low + round((high - low) * i / (count + 1)) for i in range(1, count + 1)} - {low, high})
        results.update(probe(cuts))


def _outcome(results: Mapping[int, bool]) -> Outcome:
    failures = [index for index, passed in results.items() if not passed]
    first_failure = min(failures) if failures else None
    below = [index for index, passed in results.items()
             if passed and (first_failure is None or index < first_failure)]
    chosen = max(below) if below else None
    non_monotone = sorted(index for index, passed in results.items()
                          if passed and first_failure is not None and index > first_failure)
    return Outcome(chosen, (chosen if chosen is not None else -1, first_failure), non_monotone, False)


# -------------------------------------------------------------------------------------------- request

@dataclass
class Request:
    """A validated search: the knob, the grid (least to most compressed), the file and the budget."""
    knob: Knob
    grid: list[float]
    file: str
    max_drop: float
    max_probes: int
    jobs: int
    out: Path
    overrides: tuple[str, ...] = ()   # the knob's own, then the user's `-S` (a preset, fixed keys)

    @property
    def variant(self) -> str:
        return variants.split_label(self.file)[0]


def plan(name: str, *, max_drop: float, file: str | None = None, low: float | None = None,
         high: float | None = None, resolution: float | None = None, direction: str | None = None,
         max_probes: int = 8, jobs: int = 1, overrides: Sequence[str] = (),
         root: str | Path = ".", out: str | Path = OUT_DIR) -> Request:
    """Check every argument against the knob and the project before any probe runs; UserError otherwise.

    A knob not in KNOBS is searchable when the configuration holds it as a number and `direction` ('higher'
    or 'lower': which values compress more), low, high, resolution and file are given. `overrides` are Hydra
    overrides every probe gets too (`experiment=firenet_study`), never the knob itself; the knob is looked up
    in conf/ of `root` composed with them, as `dvc exp run` will compose it.
    """
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not math.isfinite(max_drop) \
            or max_drop <= 0:
        raise UserError(f"--max-drop must be a positive number of percentage points (e.g. 1), got {max_drop}")
    for override in overrides:
        key = override.partition("=")[0].strip()
        if "=" not in override or not key:
            raise UserError(f"-S {override!r}: an override is KEY=VALUE (e.g. -S experiment=firenet_study)")
        if key == name:
            raise UserError(f"-S {override}: the search sets {name} itself; give its range with --low/--high")
    config = composed_params(Path(root), (*(KNOBS[name].overrides if name in KNOBS else ()), *overrides))
    value = _param_value(name, config)
    knob = KNOBS.get(name) or _declared_knob(name, value, direction, low, high, resolution, file)
    if direction is not None and name in KNOBS and (direction == "higher") != knob.higher_compresses:
        raise UserError(f"{name} compresses more at {'higher' if knob.higher_compresses else 'lower'} values: "
                        f"drop --direction")
    low = knob.low if low is None else low
    high = knob.high if high is None else high
    resolution = knob.resolution if resolution is None else resolution
    _check_range(knob, low, high, resolution)
    if isinstance(max_probes, bool) or not isinstance(max_probes, int) or max_probes < 2:
        raise UserError(f"--max-probes must be an integer >= 2 (both ends of the range are probed first), got "
                        f"{max_probes}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"-j/--jobs must be an integer >= 1, got {jobs}")
    file = file or knob.file
    _check_file(file)
    steps = round((high - low) / resolution)
    grid = sorted({_on_grid(min(low + step * resolution, high), knob) for step in range(steps + 1)} | {high})
    if not knob.higher_compresses:
        grid.reverse()
    return Request(knob, grid, file, float(max_drop), max_probes, jobs, Path(out),
                   (*knob.overrides, *overrides))


def _declared_knob(name, value, direction, low, high, resolution, file) -> Knob:
    known = ", ".join(KNOBS)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} is not a numeric parameter (its value is {value!r}): search one of {known}, or "
                        f"a numeric key of params.yaml")
    missing = [flag for flag, given in (("--direction", direction), ("--low", low), ("--high", high),
                                        ("--resolution", resolution), ("--file", file)) if given is None]
    if missing:
        raise UserError(f"{name} is not a known knob ({known}): declare it with {', '.join(missing)}")
    if direction not in ("higher", "lower"):
        raise UserError(f"--direction must be 'higher' or 'lower' (which values compress more), got {direction!r}")
    integer = isinstance(value, int) and float(resolution).is_integer()
    return Knob(name, direction == "higher", low, high, resolution, file, integer=integer)


def composed_params(root: Path, overrides: Sequence[str]) -> dict:
    """conf/ composed with the overrides by DVC's own function, as `dvc exp run -S ...` will compose it."""
    from dvc.utils.hydra import compose_and_dump

    conf = root / "conf"
    if not (conf / "config.yaml").is_file():
        raise UserError(f"{conf / 'config.yaml'} not found: run compresslab search from the project root")
    with tempfile.TemporaryDirectory() as scratch:
        composed = Path(scratch) / "params.yaml"
        try:
            compose_and_dump(composed, str(conf.resolve()), None, "config", str(root.resolve()), list(overrides))
        except Exception as err:  # noqa: BLE001 - Hydra raises many kinds; each means a bad override
            first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
            raise UserError(f"the overrides {' '.join(overrides)} do not compose: {first}") from None
        return yaml.safe_load(composed.read_text()) or {}


def _param_value(name: str, config: Mapping) -> object:
    node = config
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise UserError(f"unknown knob {name}: not a key of the configuration (known knobs: "
                            f"{', '.join(KNOBS)}; any numeric key of params.yaml with --direction)")
        node = node[part]
    return node


def _check_range(knob: Knob, low: float, high: float, resolution: float) -> None:
    for flag, value in (("--low", low), ("--high", high), ("--resolution", resolution)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{flag} must be a number, got {value!r}")
    bottom, top = knob.valid
    upper = f"< {top:g}" if knob.open_high else f"<= {top:g}"
    for flag, value in (("--low", low), ("--high", high)):
        if value < bottom or value > top or (knob.open_high and value >= top):
            why = f": {knob.why_valid}" if knob.why_valid else ""
            raise UserError(f"{flag} {value:g} is outside {knob.name}'s valid values (>= {bottom:g} and {upper}){why}")
        if knob.integer and not float(value).is_integer():
            raise UserError(f"{flag} must be a whole number for {knob.name}, got {value:g}")
    if low >= high:
        raise UserError(f"--low ({low:g}) must be below --high ({high:g})")
    if resolution <= 0 or resolution > high - low:
        raise UserError(f"--resolution must be > 0 and at most the range {high - low:g}, got {resolution:g}")
    if knob.integer and not float(resolution).is_integer():
        raise UserError(f"--resolution must be a whole number for {knob.name}, got {resolution:g}")


def _check_file(file: str) -> None:
    variant, mode = variants.split_label(file)
    if variant not in variants.VARIANTS or mode not in variants.MODES:
        raise UserError(f"--file {file!r} names no file: use <variant>-<mode> with a variant of "
                        f"{', '.join(variants.VARIANTS)} and a mode of {', '.join(variants.MODES)} (e.g. pqat-int8)")
    if variants.is_qat(variant) and mode != "int8":
        raise UserError(f"--file {file}: QAT-trained variants become int8 files only; use {variant}-int8")


def _on_grid(value: float, knob: Knob) -> float:
    return int(round(value)) if knob.integer else round(value, 6)


# ----------------------------------------------------------------------------------------------- run

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
        _wait_for_idle_workers()
        for index in indices:
            _queue(request, request.grid[index], names[index])
            queued.append(names[index])
        for index, seconds in _wait(list(names.values()), request.jobs, names):
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


def _dvc(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise UserError(f"`dvc {' '.join(args)}` failed: {last[0]}")
    return result


def _queue(request: Request, value: float, name: str) -> None:
    overrides = [*request.overrides, f"{request.knob.name}={_text(value)}"]
    _dvc("exp", "run", "--queue", "--name", name, *[arg for o in overrides for arg in ("-S", o)])


class ProbeFailed(UserError):
    """A probe's experiment failed in one of its stages; the message carries that stage's own error line."""


def _wait(names: list[str], jobs: int, indices: Mapping[int, str]):
    """Start the queue's workers and yield (grid index, seconds) as each named experiment succeeds.

    Raises:
      ProbeFailed: an experiment failed, after every experiment that succeeded by then was yielded.
    """
    _start_workers(min(jobs, len(names)))
    index_of = {name: index for index, name in indices.items()}
    started, pending, stalled, restarted = time.monotonic(), set(names), 0, False
    while pending:
        time.sleep(POLL_SECONDS)
        status, workers = queue_state()
        for name in sorted(pending):
            if status.get(name) == "Success":
                pending.discard(name)
                yield index_of[name], time.monotonic() - started
        failed = sorted(name for name in pending if status.get(name) == "Failed")
        if failed:
            raise ProbeFailed(f"probe {failed[0]} failed: {probe_error(failed[0])}")
        stalled = stalled + 1 if pending and workers == 0 else 0
        if stalled >= STALLED_POLLS:
            if restarted:
                raise UserError(f"DVC's queue has no worker left for probe(s) {', '.join(sorted(pending))} "
                                f"({', '.join(sorted({status.get(n) or 'missing' for n in pending}))}): run the "
                                f"search again (probes that finished are reused from DVC's run cache)")
            _start_workers(min(jobs, len(pending)))
            stalled, restarted = 0, True


def probe_error(name: str) -> str:
    """The failing stage and its own one-line error, read from `dvc queue logs NAME`."""
    logs = subprocess.run([sys.executable, "-m", "dvc", "queue", "logs", name], capture_output=True, text=True)
    return failure_line(logs.stdout + logs.stderr, name)


def failure_line(log: str, name: str) -> str:
    """'stage S: <its error line>' from an experiment's log: the stage DVC names as failing, and the last
    `error: ` line of ours (a UserError) or else the last line of a traceback."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    stages = [m.group(1) for line in lines if (m := re.search(r"failed to reproduce '([^']+)'", line))]
    ours = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b[^:]*: ", line)]
    reason = (ours or raised or [f"see `dvc queue logs {name}`"])[-1]
    reason = reason if len(reason) <= 400 else reason[:400] + " ..."
    return f"stage {stages[-1]}: {reason}" if stages else reason


def _start_workers(jobs: int) -> None:
    # The workers DVC spawns inherit the caller's stdout and stderr: through a pipe, `dvc queue start` would
    # only seem to return once they exit, i.e. after the whole round. A file keeps its output for the error.
    with tempfile.TemporaryFile("w+") as output:
        code = subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)],
                              stdout=output, stderr=subprocess.STDOUT).returncode
        if code != 0:
            output.seek(0)
            last = output.read().strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"`dvc queue start` failed: {last[0]}")


def _wait_for_idle_workers(seconds: float = 60.0) -> None:
    """Let the previous round's workers shut down (each does once the queue is empty, about 15 s after its last
    experiment) before a new round is queued: one on its way out takes a new message and drops it."""
    deadline = time.monotonic() + seconds
    while queue_state()[1] and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS / 3)


def stop_probes(names: Sequence[str]) -> None:
    """Take the named experiments out of the queue: remove the waiting ones, kill the running ones (best effort:
    this runs on the way out of a failed or interrupted search)."""
    try:
        status = queue_status()
    except UserError:
        return
    for command, states in (("remove", ("Queued", "Failed")), ("kill", ("Running",))):
        doomed = [name for name in names if status.get(name) in states]
        if doomed:
            subprocess.run([sys.executable, "-m", "dvc", "queue", command, *doomed], capture_output=True)


def queue_status() -> dict[str, str]:
    """{experiment name: status} from `dvc queue status` (Queued, Running, Success, Failed)."""
    return queue_state()[0]


def queue_state(root: str | Path | None = None) -> tuple[dict[str, str], int]:
    """{experiment name: status} of DVC's queue (Queued, Running, Success, Failed), and how many of its workers
    are alive (active or idle), for the repository at `root` (default: the one around the working directory).

    What `dvc queue status` prints, read from DVC's queue in this process: a `dvc` process per poll spent about
    a second of CPU on its imports, a fifth of a core taken from the probes while a search waited on them.
    """
    from dvc.exceptions import DvcException  # noqa: PLC0415  (0.2 s, paid by the search alone)
    from dvc.repo import Repo  # noqa: PLC0415

    try:
        with Repo(root) as repo:
            queue = repo.experiments.celery_queue   # what `dvc queue status` reads (DVC 3.67)
            status = {entry["name"]: entry["status"] for entry in queue.status() if entry.get("name")}
            return status, len(queue.worker_status())
    except DvcException as err:
        raise UserError(f"reading DVC's experiment queue failed: {err}") from err


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


def experiment_metrics(name: str) -> dict:
    """{variant: {mode: {figure: value}}}: reports/metrics.json of DVC experiment `name`."""
    shown = json.loads(_dvc("exp", "show", "--json").stdout)
    for revision in shown:
        for experiment in revision.get("experiments") or []:
            if experiment.get("name") == name:
                data = experiment["revs"][0].get("data") or {}
                return ((data.get("metrics") or {}).get("reports/metrics.json") or {}).get("data") or {}
    raise UserError(f"`dvc exp show` lists no experiment {name}: was it removed while the search ran?")


def summary_run_id(name: str, *, uri: str | None = None) -> str | None:
    """The MLflow summary run of experiment `name`; for a probe that re-ran nothing, the run that logged the
    committed results (its reports/metrics.json hash, as HEAD's dvc.lock records it); None if none is here."""
    from compresslab.tools.compare import SUMMARY_FILTER, summary_store

    store = summary_store(uri)
    if store is None:
        return None
    client, experiment_id = store
    queries = [f"tags.dvc_exp_name = '{name}'"]
    committed = _committed_metrics_md5()
    if committed:
        queries.append(f"tags.`dvc.out.{paths.REPORTS}/metrics.json` = '{committed}'")
    for query in queries:
        runs = client.search_runs([experiment_id], f"{SUMMARY_FILTER} and {query}", max_results=1,
                                  order_by=["attributes.start_time DESC"])
        if runs:
            return runs[0].info.run_id
    return None


def _committed_metrics_md5() -> str | None:
    shown = subprocess.run(["git", "show", "HEAD:dvc.lock"], capture_output=True, text=True)
    if shown.returncode != 0:
        return None
    report = ((yaml.safe_load(shown.stdout) or {}).get("stages") or {}).get("report") or {}
    return next((out.get("md5") for out in report.get("outs") or []
                 if out.get("path") == f"{paths.REPORTS}/metrics.json"), None)


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
    outcome = search.outcome or _outcome({index: probe.passed for index, probe in search.probes.items()})
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

    from compresslab.reporting.report import save_figure

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
