"""The one rule every command chooses a file by: `compare --max-drop`, `search --max-drop` and `--register`.

    drop      = the reference's quality - the file's quality, in percentage points (positive: a loss)
    reference = the run's float control, finetune-float32 (baseline-float32 only in a run without a control):
                the control had the compression stages' training budget, so the drop is what compression costs
    split     = validation: a file chosen by its test figure and reported with it looks better than it is;
                the test split decides only for runs logged before the evaluate stage measured validation
    qualifies = drop <= max_drop (+ TOLERANCE_PP); the float32 references are never candidates
    objective = the lowest cost among the qualifying files: size = gzip_bytes, latency = latency_ratio (timed
                against its own run's baseline-float32 in alternating rounds, so it holds across runs and
                machines); ties go to the better decision-split quality, then to the first listed

The held-out test figures are carried beside every decision (`Drop.test_drop_pp`) and printed with it.
"""

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from compresslab import variants
from compresslab.errors import UserError
from compresslab.results.task import Task, task_of

# Drops come from float differences: (0.95 - 0.96) * 100 is -1.0000000000000009, which must pass --max-drop 1.
TOLERANCE_PP = 1e-9
OBJECTIVES = {"size": "gzip_bytes", "latency": "latency_ratio"}
# Runs logged before the interleaved ratio existed have only milliseconds: a comparison in which no file has a
# ratio ranks by them, and says so (`latency_note`).
MILLISECONDS = "latency_median_ms"
REFERENCES = ((variants.CONTROL, "float32"), (variants.BASELINE, "float32"))
SPLIT_NAMES = {"val": "validation", "test": "test"}


@dataclass(frozen=True)
class Drop:
    """How far one file falls below its run's reference: on the split the rule decides on, and on the
    held-out test split (the figures reported beside the decision). Qualities are fractions, drops pp."""
    reference: str                      # 'finetune-float32' or 'baseline-float32'
    split: str                          # 'val' or 'test'
    decision: float | None              # the file's quality on `split`
    reference_decision: float | None
    drop_pp: float | None
    test: float | None                  # the file's quality on the test split
    reference_test: float | None
    test_drop_pp: float | None

    def within(self, max_drop: float) -> bool:
        return within(self.drop_pp, max_drop)


def within(drop_pp: float | None, max_drop: float) -> bool:
    """Whether a drop passes --max-drop (a drop not measured never does)."""
    return drop_pp is not None and drop_pp <= max_drop + TOLERANCE_PP


def is_reference(variant: str, mode: str) -> bool:
    """The float32 files drops are measured against: never a candidate (they compress nothing)."""
    return (variant, mode) in REFERENCES


def reference_file(files: Collection[tuple[str, str]]) -> tuple[str, str] | None:
    """The (variant, mode) a run's drops are measured against: its control, else its baseline; None if neither."""
    return next((file for file in REFERENCES if file in files), None)


def measure_drop(files: Mapping[tuple[str, str], Mapping], file: tuple[str, str],
                 task: Task | None = None) -> Drop | None:
    """The drop of `file` against its run's reference, from one run's records (or rows) per (variant, mode).

    Returns None when the run holds no reference or no figures for `file`. The task (accuracy or mAP) is the
    one the run's figures hold, unless given.
    """
    task = task or task_of(files.values())
    found = reference_file(files)
    if found is None or file not in files:
        return None
    mine, theirs = files[file], files[found]
    split = "val" if _figure(mine, task.validation_quality) is not None and \
        _figure(theirs, task.validation_quality) is not None else "test"
    decision, reference_decision = _figure(mine, task.figure(split)), _figure(theirs, task.figure(split))
    test, reference_test = _figure(mine, task.quality), _figure(theirs, task.quality)
    return Drop(variants.label(*found), split, decision, reference_decision,
                _drop_pp(reference_decision, decision, task), test, reference_test,
                _drop_pp(reference_test, test, task))


def _figure(figures, name: str) -> float | None:
    # A record (results.record.Record) or its row's figures: the rule reads either.
    return figures.get(name) if isinstance(figures, Mapping) else getattr(figures, name, None)


def _drop_pp(reference: float | None, value: float | None, task: Task) -> float | None:
    if reference is None or value is None:
        return None
    return (reference - value) * 100.0 if task.higher_is_better else (value - reference) * 100.0


def check_max_drop(max_drop) -> None:
    """--max-drop is a finite number of points >= 0 (0: no loss at all)."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not math.isfinite(max_drop) \
            or max_drop < 0:
        raise UserError(f"--max-drop must be a number of percentage points >= 0 (e.g. 1 for 1 pp), got {max_drop}")


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise UserError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


def cost_figure(rows: Sequence[Mapping], objective: str) -> str:
    """The figure the objective ranks `rows` by: gzip_bytes, or latency_ratio (milliseconds only when no row
    has a ratio: runs logged before it existed)."""
    check_objective(objective)
    if objective == "latency" and not any(row.get(OBJECTIVES["latency"]) is not None for row in rows):
        return MILLISECONDS
    return OBJECTIVES[objective]


def latency_note(cost: str) -> list[str]:
    if cost != MILLISECONDS:
        return []
    return ["no run holds an interleaved latency ratio (logged before it existed): latency is ranked by median "
            "milliseconds, which drift between runs and machines; re-run the experiments to rank by the ratio"]


def pp(value: float, *, signed: bool = False) -> str:
    """Points with two decimals; a float difference of -1e-15 prints as 0.00, not -0.00."""
    return f"{round(value, 2) + 0.0:{'+' if signed else ''}.2f}"


def describe(max_drop: float, objective: str, reference: str, split: str) -> str:
    """The rule in words, as printed and as tagged on a registered version."""
    best = "smallest" if objective == "size" else "fastest"
    return f"the {best} file within {max_drop:g} pp of its run's {reference} on the {SPLIT_NAMES[split]} split"


# ------------------------------------------------------------------------------------------ choosing

@dataclass(frozen=True)
class Candidate:
    """A file the rule may choose: its name in messages, its drop, and its cost for the objective."""
    name: str
    drop: Drop | None
    cost: float | None


def choose(candidates: Sequence[Candidate], max_drop: float, cost: str) -> tuple[Candidate, list[tuple[str, str]]]:
    """The lowest-cost candidate within max_drop, and (name, why it lost) for every other one.

    Raises:
      UserError: when none qualifies, naming the smallest drop found and the --max-drop that admits it.
    """
    check_max_drop(max_drop)
    if not candidates:
        raise UserError("the runs hold no compressed file, only the float32 references: run the whole pipeline "
                        "(`dvc repro`) before selecting")
    qualified = [c for c in candidates if c.drop is not None and c.drop.within(max_drop) and c.cost is not None]
    if not qualified:
        raise _nothing_qualifies(candidates, max_drop, cost)
    chosen = min(qualified, key=lambda c: (c.cost, -_decision(c)))
    return chosen, [(c.name, _rejection(c, chosen, cost, max_drop)) for c in candidates if c is not chosen]


def _decision(candidate: Candidate) -> float:
    return candidate.drop.decision or 0.0


def _nothing_qualifies(candidates: Sequence[Candidate], max_drop: float, cost: str) -> UserError:
    scored = [c for c in candidates if c.drop is not None and c.drop.drop_pp is not None]
    if not scored:
        return UserError("no file has a quality next to a float32 reference of its run (finetune or baseline): "
                         "check that every file was evaluated and scored (reports/report.md)")
    best = min(scored, key=lambda c: c.drop.drop_pp)
    drop = best.drop.drop_pp
    if within(drop, max_drop):   # within the drop, but the objective was never measured
        objective = "size" if cost == OBJECTIVES["size"] else "latency"
        return UserError(f"no file within {max_drop:g} pp has a measured {objective}: check "
                         f"evaluate.threads and the evaluate stage's output")
    needed = math.ceil(round(drop * 100, 6)) / 100
    return UserError(f"no compressed file is within {max_drop:g} pp of its run's {best.drop.reference} accuracy "
                     f"on the {SPLIT_NAMES[best.drop.split]} split: the smallest drop is {drop:.2f} pp "
                     f"({best.name}); pass --max-drop {needed:g} or more")


def _rejection(candidate: Candidate, chosen: Candidate, cost: str, max_drop: float) -> str:
    drop = candidate.drop
    if drop is None or drop.drop_pp is None:
        return "no accuracy against a float32 reference of its run"
    if not drop.within(max_drop):
        mine, limit = pp(drop.drop_pp), pp(max_drop)
        if mine == limit:   # 1.004 must not read "1.00 pp > 1.00 pp"
            mine = f"{drop.drop_pp:.4f}"
        held_out = "" if drop.split == "test" or drop.test_drop_pp is None else \
            f" (held-out test: {pp(drop.test_drop_pp)} pp)"
        return f"{'validation ' if drop.split == 'val' else ''}accuracy drop {mine} pp > {limit} pp{held_out}"
    size = cost == OBJECTIVES["size"]
    if candidate.cost is None:
        return f"no {'gzip size' if size else 'latency'} measured"
    show = {OBJECTIVES["size"]: _size_text, OBJECTIVES["latency"]: _ratio_text}.get(cost, _milliseconds_text)
    mine, theirs = show(candidate.cost), show(chosen.cost)
    if candidate.cost > chosen.cost:
        if mine == theirs:   # a difference the rounding hides
            mine, theirs = show(candidate.cost, exact=True), show(chosen.cost, exact=True)
        return f"{'larger' if size else 'slower'}: {mine} vs {theirs} chosen"
    if _decision(candidate) < _decision(chosen):
        split = "" if drop.split == "test" else f" on the {SPLIT_NAMES[drop.split]} split"
        return (f"as {'small' if size else 'fast'} as the choice ({mine}) but less accurate{split}: "
                f"{_decision(candidate) * 100:.2f} % vs {_decision(chosen) * 100:.2f} %")
    return f"ties with the choice ({mine}, same accuracy): the newer run's file was taken"


def _size_text(size: float, exact: bool = False) -> str:
    return f"{size:,.0f} B" if exact else f"{size / 1024:.1f} KB"


def _milliseconds_text(ms: float, exact: bool = False) -> str:
    return f"{ms:.5f} ms" if exact else f"{ms:.3f} ms"


def _ratio_text(ratio: float, exact: bool = False) -> str:
    return f"{ratio:.5f}x baseline-float32 latency" if exact else f"{ratio:.3f}x baseline-float32 latency"
