"""What `compresslab search` is asked to do, checked before any probe runs: the searchable knobs, the grid of
a knob's range (least to most compressed) or of two knobs' ranges, the file whose accuracy counts, the budget,
and the Hydra overrides every probe gets, composed from conf/ as `dvc exp run -S` will compose them.

Every check raises a one-line UserError naming the flag and the fix.
"""

import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from compresslab import paths, variants
from compresslab.errors import UserError

OUT_DIR = paths.REPORTS / "search"


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
    open_low: bool = False
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
    # The mixed file's size target as a ratio to its float32 file (`bytes` cleared: the config takes one of two).
    Knob("convert.mixed.ratio", True, 4, 32, 4, "pruned-mixed", (1.0, math.inf), open_low=True,
         overrides=("convert.mixed.bytes=null",), why_valid="the target is the float32 file's size over the ratio"),
)}


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

    @property
    def knob_names(self) -> str:
        return self.knob.name

    def setting_text(self, value: float) -> str:
        return f"{self.knob.name}={value:g}"


@dataclass
class GridRequest:
    """A validated search over two knobs: every setting of the product of their grids is probed."""
    knobs: tuple[Knob, Knob]
    grids: tuple[list[float], list[float]]   # each from least to most compressed
    file: str
    max_drop: float
    max_probes: int
    jobs: int
    out: Path
    overrides: tuple[str, ...] = ()

    @property
    def variant(self) -> str:
        return variants.split_label(self.file)[0]

    @property
    def settings(self) -> list[tuple[float, float]]:
        return [(first, second) for first in self.grids[0] for second in self.grids[1]]

    @property
    def knob_names(self) -> str:
        return " x ".join(knob.name for knob in self.knobs)

    def setting_text(self, value: tuple[float, float]) -> str:
        return ", ".join(f"{knob.name}={number:g}" for knob, number in zip(self.knobs, value))


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
    _check_budget(max_drop, max_probes, jobs, "both ends of the range are probed first")
    _check_overrides(overrides, [name], "give its range with --low/--high")
    config = composed_params(Path(root), (*(KNOBS[name].overrides if name in KNOBS else ()), *overrides))
    value = _param_value(name, config)
    knob = KNOBS.get(name) or _declared_knob(name, value, direction, low, high, resolution, file)
    if direction is not None and name in KNOBS and (direction == "higher") != knob.higher_compresses:
        raise UserError(f"{name} compresses more at {'higher' if knob.higher_compresses else 'lower'} values: "
                        f"drop --direction")
    grid = _grid(knob, low, high, resolution, ("--low", "--high", "--resolution"))
    file = file or knob.file
    _check_file(file, config)
    return Request(knob, grid, file, float(max_drop), max_probes, jobs, Path(out),
                   (*knob.overrides, *overrides))


def plan_grid(names: Sequence[str], *, max_drop: float, file: str | None, ranges: Sequence[str] = (),
              max_probes: int = 16, jobs: int = 1, overrides: Sequence[str] = (),
              root: str | Path = ".", out: str | Path = OUT_DIR) -> GridRequest:
    """Check a search over two known knobs before any probe runs; UserError otherwise.

    ranges: `KNOB=LOW:HIGH:STEP` per knob (a knob without one takes its default range); the grid is every
    pair of values, and it must hold at most max_probes settings: all of them are probed, since the Pareto
    front of size against accuracy needs each one.
    """
    if len(names) != 2 or names[0] == names[1]:
        raise UserError(f"search takes one knob, or two different ones for a grid, got {' '.join(names)}")
    unknown = [name for name in names if name not in KNOBS]
    if unknown:
        raise UserError(f"{unknown[0]} is not a known knob: a two-knob search takes two of {', '.join(KNOBS)}")
    if not file:
        raise UserError("a two-knob search needs --file: the file both knobs change (e.g. pcqat-int8 for "
                        "prune.final_sparsity and cluster.number_of_clusters)")
    _check_budget(max_drop, max_probes, jobs, "a grid has at least 2 x 2 settings")
    _check_overrides(overrides, names, "give its range with --range KNOB=LOW:HIGH:STEP")
    knobs = tuple(KNOBS[name] for name in names)
    given = _parse_ranges(ranges, names)
    grids = tuple(_grid(knob, *given.get(knob.name, (None, None, None)),
                        tuple(f"--range {knob.name}'s {part}" for part in ("LOW", "HIGH", "STEP")))
                  for knob in knobs)
    size = len(grids[0]) * len(grids[1])
    if size > max_probes:
        raise UserError(f"the grid holds {size} settings ({len(grids[0])} x {len(grids[1])}) and --max-probes is "
                        f"{max_probes}: coarsen a range with --range KNOB=LOW:HIGH:STEP or pass --max-probes {size}")
    config = composed_params(Path(root), (*knobs[0].overrides, *knobs[1].overrides, *overrides))
    for name in names:
        _param_value(name, config)
    _check_file(file, config)
    return GridRequest(knobs, grids, file, float(max_drop), max_probes, jobs, Path(out),
                       (*knobs[0].overrides, *knobs[1].overrides, *overrides))


def _check_budget(max_drop, max_probes, jobs, why_two: str) -> None:
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not math.isfinite(max_drop) \
            or max_drop <= 0:
        raise UserError(f"--max-drop must be a positive number of percentage points (e.g. 1), got {max_drop}")
    if isinstance(max_probes, bool) or not isinstance(max_probes, int) or max_probes < 2:
        raise UserError(f"--max-probes must be an integer >= 2 ({why_two}), got {max_probes}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"-j/--jobs must be an integer >= 1, got {jobs}")


def _check_overrides(overrides: Sequence[str], names: Sequence[str], fix: str) -> None:
    for override in overrides:
        key = override.partition("=")[0].strip()
        if "=" not in override or not key:
            raise UserError(f"-S {override!r}: an override is KEY=VALUE (e.g. -S experiment=firenet_study)")
        if key in names:
            raise UserError(f"-S {override}: the search sets {key} itself; {fix}")


def _parse_ranges(ranges: Sequence[str], names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    parsed = {}
    for text in ranges:
        name, _, numbers = text.partition("=")
        parts = numbers.split(":")
        if name not in names:
            raise UserError(f"--range {text}: {name or '(no knob)'} is not one of the searched knobs "
                            f"{', '.join(names)}; write --range KNOB=LOW:HIGH:STEP")
        try:
            low, high, step = (float(part) for part in parts)
        except ValueError:
            raise UserError(f"--range {text}: write --range {name}=LOW:HIGH:STEP with three numbers "
                            f"(e.g. {name}={KNOBS[name].low:g}:{KNOBS[name].high:g}:"
                            f"{KNOBS[name].resolution:g})") from None
        if name in parsed:
            raise UserError(f"--range {name} is given twice: give each knob one range")
        parsed[name] = (low, high, step)
    return parsed


def _grid(knob: Knob, low: float | None, high: float | None, resolution: float | None,
          flags: tuple[str, str, str]) -> list[float]:
    """The knob's values from its least to its most compressed, every `resolution` from low to high."""
    low = knob.low if low is None else low
    high = knob.high if high is None else high
    resolution = knob.resolution if resolution is None else resolution
    _check_range(knob, low, high, resolution, flags)
    steps = round((high - low) / resolution)
    grid = sorted({_on_grid(min(low + step * resolution, high), knob) for step in range(steps + 1)} | {high})
    if not knob.higher_compresses:
        grid.reverse()
    return grid


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


def _check_range(knob: Knob, low: float, high: float, resolution: float,
                 flags: tuple[str, str, str] = ("--low", "--high", "--resolution")) -> None:
    low_flag, high_flag, step_flag = flags
    for flag, value in ((low_flag, low), (high_flag, high), (step_flag, resolution)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{flag} must be a number, got {value!r}")
    bottom, top = knob.valid
    lower = f"> {bottom:g}" if knob.open_low else f">= {bottom:g}"
    upper = f"< {top:g}" if knob.open_high else f"<= {top:g}"
    for flag, value in ((low_flag, low), (high_flag, high)):
        if value < bottom or value > top or (knob.open_low and value <= bottom) or (knob.open_high and value >= top):
            why = f": {knob.why_valid}" if knob.why_valid else ""
            raise UserError(f"{flag} {value:g} is outside {knob.name}'s valid values ({lower} and {upper}){why}")
        if knob.integer and not float(value).is_integer():
            raise UserError(f"{flag} must be a whole number for {knob.name}, got {value:g}")
    if low >= high:
        raise UserError(f"{low_flag} ({low:g}) must be below {high_flag} ({high:g}) for {knob.name}")
    if resolution <= 0 or resolution > high - low:
        raise UserError(f"{step_flag} must be > 0 and at most the range {high - low:g}, got {resolution:g}")
    if knob.integer and not float(resolution).is_integer():
        raise UserError(f"{step_flag} must be a whole number for {knob.name}, got {resolution:g}")


def _check_file(file: str, config: Mapping) -> None:
    """The file names a variant and mode, and the composed configuration makes it."""
    variant, mode = variants.split_label(file)
    if variant not in variants.VARIANTS or mode not in variants.MODES:
        raise UserError(f"--file {file!r} names no file: use <variant>-<mode> with a variant of "
                        f"{', '.join(variants.VARIANTS)} and a mode of {', '.join(variants.MODES)} (e.g. pqat-int8)")
    if variants.is_qat(variant) and mode != "int8":
        raise UserError(f"--file {file}: QAT-trained variants become int8 files only; use {variant}-int8")
    convert = config.get("convert") or {}
    modes = convert.get("modes") or []
    if not variants.is_qat(variant) and mode not in modes:
        raise UserError(f"--file {file}: convert.modes ({', '.join(modes)}) makes no {mode} file; add it, e.g. "
                        f"-S 'convert.modes=[{', '.join([*modes, mode])}]'")
    chosen = (convert.get("mixed") or {}).get("variants")
    if mode == "mixed" and chosen is not None and variant not in chosen:
        raise UserError(f"--file {file}: convert.mixed.variants ({', '.join(chosen)}) gives {variant} no mixed "
                        f"file; add it with -S 'convert.mixed.variants=[{', '.join([*chosen, variant])}]'")


def _on_grid(value: float, knob: Knob) -> float:
    return int(round(value)) if knob.integer else round(value, 6)
