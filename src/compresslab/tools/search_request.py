"""What `compresslab search` is asked to do, checked before any probe runs: the searchable knobs, the grid of
a knob's range (least to most compressed), the file whose accuracy counts, the budget, and the Hydra overrides
every probe gets, composed from conf/ as `dvc exp run -S` will compose them.

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
