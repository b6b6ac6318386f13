"""The latency and memory measurement itself, self-contained: the Python standard library, NumPy and LiteRT
(`ai_edge_litert`) only, never a compresslab import. `timing.py` runs it on this machine for the evaluate stage;
the device stage (`devices/`) copies this one file to a target board over SSH and runs it there with the board's
own Python, so a Raspberry Pi's figures come from the very same code as this machine's:

    python3 timing_core.py PLAN.json OUT.json             # time the plan's files (time_plan), write the figures
    python3 timing_core.py --memory [MODEL [SAMPLE.npy]]  # peak RSS of this fresh process running MODEL

Failures print one line `error: ...` to stderr and exit 1 (3 when NumPy or LiteRT is missing), for the caller
to pass on.
"""

from __future__ import annotations   # the annotations below parse on a board's older Python too

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

try:   # on a device without them, `main` says so in one line instead of a traceback
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
except ImportError as missing:
    np = Interpreter = None
    MISSING = f"{missing.name or missing} is not installed for {sys.executable}"
else:
    MISSING = None

RANDOM_SEED = 0
MEMORY_RUNS = 10
MEMORY_THREADS = 1
MISSING_EXIT = 3
# The vector extensions that decide which kernels LiteRT/XNNPACK can use, as /proc/cpuinfo names them.
VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                     "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "asimd", "asimddp", "sve", "i8mm")
PACKAGES = ("ai-edge-litert", "tensorflow", "numpy")


class MeasurementError(ValueError):
    """A file or input the measurement cannot use; its message is one line for the user."""


# ------------------------------------------------------------------------------------------- inputs

def load(path, threads: int) -> "Interpreter":
    """An interpreter for `path` at `threads` threads with its tensors allocated."""
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=int(threads))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MeasurementError(f"{path}: cannot load TFLite model ({reason})") from None
    return interpreter


def quantize(values, detail: dict):
    """`values` in the dtype of the tensor `detail` describes, quantized when that dtype is an integer."""
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return values.astype(dtype, copy=False)
    scale, zero_point = detail["quantization"]
    if scale == 0:
        raise MeasurementError(f"input tensor {detail['name']!r} is {dtype.name} without quantization "
                               "parameters; convert with int8_io or float input")
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(dtype)


def make_input(detail: dict, sample=None, rng=None):
    """An array for one input tensor: `sample` (float in [0, 1], any shape with the tensor's number of
    elements) or deterministic uniform noise in [0, 1], in the tensor's shape and dtype (quantized)."""
    shape = tuple(int(size) for size in detail["shape"])
    if sample is None:
        rng = rng if rng is not None else np.random.default_rng(RANDOM_SEED)
        values = rng.random(shape, dtype=np.float32)
    else:
        values = np.asarray(sample, dtype=np.float32)
        if values.size != int(np.prod(shape)):
            raise MeasurementError(f"input sample of shape {values.shape} does not fit model input "
                                   f"{detail['name']!r} of shape {list(shape)}: pass one image of the model's size")
        values = values.reshape(shape)
    return quantize(values, detail)


def feed_inputs(interpreter, sample=None) -> None:
    """Set every input tensor: the first from `sample` (or noise), any others from noise."""
    rng = np.random.default_rng(RANDOM_SEED)
    for position, detail in enumerate(interpreter.get_input_details()):
        interpreter.set_tensor(detail["index"], make_input(detail, sample if position == 0 else None, rng))


# ------------------------------------------------------------------------------------------- timing

def timed_runs(interpreter, min_runs: int, min_seconds: float, max_runs: int):
    """Milliseconds of each `invoke()`, until both min_runs and min_seconds are reached (at most max_runs)."""
    times_ms, elapsed = [], 0.0
    while len(times_ms) < max_runs and (len(times_ms) < min_runs or elapsed < min_seconds):
        start = time.perf_counter()
        interpreter.invoke()
        took = time.perf_counter() - start
        elapsed += took
        times_ms.append(took * 1000.0)
    return np.asarray(times_ms)


def latency(interpreter, threads: int, *, warmup: int, min_runs: int, min_seconds: float, max_runs: int) -> dict:
    """`warmup` untimed runs (lazy allocation, XNNPACK weight packing, cold caches), then the timed ones.

    The median is the figure to compare by: noise on a shared machine only ever adds time, in rare large
    spikes that drag the mean and std but leave the median where most runs are.
    """
    for _ in range(warmup):
        interpreter.invoke()
    times_ms = timed_runs(interpreter, min_runs, min_seconds, max_runs)
    median = float(np.median(times_ms))
    return {"median_ms": median, "p25_ms": float(np.percentile(times_ms, 25)),
            "p75_ms": float(np.percentile(times_ms, 75)), "p90_ms": float(np.percentile(times_ms, 90)),
            "mean_ms": float(np.mean(times_ms)), "std_ms": float(np.std(times_ms)),
            "runs": len(times_ms), "fps": 1000.0 / median, "threads": int(threads)}


def ratio(pair, *, rounds: int, runs_per_round: int, warmup: int) -> dict:
    """Latency of pair[0] over pair[1] (fed interpreters), timed in alternating rounds: each round times
    `runs_per_round` invocations of one, then of the other (ABBA over consecutive rounds), and the ratio of
    the two medians is one sample; both files see the same machine state, so the ratio holds where the
    milliseconds drift."""
    for interpreter in pair:
        for _ in range(warmup):
            interpreter.invoke()
    ratios = []
    for number in range(rounds):
        medians = {}
        for index in ((0, 1) if number % 2 == 0 else (1, 0)):
            medians[index] = float(np.median(timed_runs(pair[index], runs_per_round, 0.0, runs_per_round)))
        ratios.append(medians[0] / medians[1])
    return {"ratio": float(np.median(ratios)), "ratio_p25": float(np.percentile(ratios, 25)),
            "ratio_p75": float(np.percentile(ratios, 75)), "rounds": rounds}


# ------------------------------------------------------------------------------------------- memory

def peak_rss_mb(model=None, sample=None, python: str = sys.executable) -> float:
    """Peak RSS (MB) of a fresh process that imports LiteRT + NumPy, loads `model` and runs it MEMORY_RUNS
    times (no model: the process alone). In this process an earlier, larger model would hide the cost, and
    on this machine TensorFlow would dwarf it."""
    args = [] if model is None else [str(model)]
    with tempfile.TemporaryDirectory() as scratch:
        if model is not None and sample is not None:
            np.save(Path(scratch) / "sample.npy", np.asarray(sample, dtype=np.float32))
            args.append(str(Path(scratch) / "sample.npy"))
        done = subprocess.run([python, os.path.abspath(__file__), "--memory", *args], capture_output=True,
                              text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MeasurementError(tail.removeprefix("error: ") if tail.startswith("error: ") else
                               f"the memory-measuring child exited with {done.returncode}: {tail}")
    return json.loads(lines[-1])["max_rss_mb"]


def max_rss_mb() -> float:
    """This process's peak RSS in MB. On Linux ru_maxrss survives fork + exec (a child of a process holding
    TensorFlow would report the parent's peak); VmHWM belongs to the new address space alone."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10   # bytes on macOS, KiB on Linux


def memory_child(args: list[str]) -> dict:
    if args:
        interpreter = load(args[0], MEMORY_THREADS)
        feed_inputs(interpreter, np.load(args[1]) if len(args) > 1 else None)
        for _ in range(MEMORY_RUNS):
            interpreter.invoke()
    return {"max_rss_mb": max_rss_mb(),
            "tensorflow_imported": any(name.split(".")[0] == "tensorflow" for name in sys.modules)}


# -------------------------------------------------------------------------------------- the machine

def machine_fingerprint() -> dict[str, str]:
    """CPU model, vector extensions, cores, OS and the versions of the packages that run the files: absolute
    latency compares only between runs on one fingerprint; across fingerprints, compare the ratios."""
    cpu, flags = cpu_info()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    found = {"cpu": cpu or platform.processor() or platform.machine(),
             "vector_extensions": " ".join(name for name in VECTOR_EXTENSIONS if name in flags) or "unknown",
             "cores": str(os.cpu_count()), "usable_cores": str(usable), "machine": platform.machine(),
             "system": f"{platform.system()} {platform.release()}", "python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def cpu_info(path="/proc/cpuinfo") -> tuple[str | None, set[str]]:
    """(model name, set of flags) of the first CPU in /proc/cpuinfo; (None, empty) where there is none."""
    model, flags = None, set()
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return model, flags
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Hardware", "cpu model") and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


# --------------------------------------------------------------------------------------------- plans

def time_plan(plan: dict, folder: Path, progress=print) -> dict:
    """Time every file of a plan, each against the plan's reference, as the evaluate stage does here.

    plan: {'files': [names in `folder`], 'reference': a name (baseline-float32's file), 'threads': [...],
      'warmup', 'min_runs', 'min_seconds', 'max_runs', 'ratio_rounds', 'measure_memory', 'sample': a .npy name
      or null}.

    Returns:
      {'fingerprint', 'files': {name: {'latency': {threads: figures}, 'ratio': {threads: figures},
       'peak_rss_mb', 'model_rss_mb'}}}.
    """
    sample = np.load(folder / plan["sample"]) if plan.get("sample") else None
    schedule = {key: plan[key] for key in ("warmup", "min_runs", "min_seconds", "max_runs")}
    baseline_rss = peak_rss_mb() if plan["measure_memory"] else None
    results = {}
    for number, name in enumerate(plan["files"], 1):
        figures = {"latency": {}, "ratio": {}}
        for threads in plan["threads"]:
            interpreter = load(folder / name, threads)
            feed_inputs(interpreter, sample)
            figures["latency"][str(threads)] = latency(interpreter, threads, **schedule)
            if name == plan["reference"]:
                figures["ratio"][str(threads)] = {"ratio": 1.0, "ratio_p25": 1.0, "ratio_p75": 1.0, "rounds": 0}
            else:
                reference = load(folder / plan["reference"], threads)
                feed_inputs(reference, sample)
                figures["ratio"][str(threads)] = ratio((interpreter, reference), rounds=plan["ratio_rounds"],
                                                       runs_per_round=10, warmup=plan["warmup"])
        if baseline_rss is not None:
            figures["peak_rss_mb"] = peak_rss_mb(folder / name, sample)
            figures["model_rss_mb"] = max(0.0, figures["peak_rss_mb"] - baseline_rss)
        results[name] = figures
        first = str(plan["threads"][0])
        progress(f"[{number}/{len(plan['files'])}] {name}: {figures['latency'][first]['median_ms']:.3f} ms at "
                 f"{first} thread(s), {figures['ratio'][first]['ratio']:.2f}x {plan['reference']}")
    return {"fingerprint": machine_fingerprint(), "files": results}


def main(argv: list[str]) -> int:
    if MISSING:
        print(f"error: {MISSING}", file=sys.stderr)
        return MISSING_EXIT
    try:
        if argv[:1] == ["--memory"]:
            print(json.dumps(memory_child(argv[1:])))
            return 0
        if len(argv) != 2:
            print("error: usage: python timing_core.py PLAN.json OUT.json | --memory [MODEL [SAMPLE.npy]]",
                  file=sys.stderr)
            return 2
        plan_path, out = Path(argv[0]), Path(argv[1])
        result = time_plan(json.loads(plan_path.read_text()), plan_path.parent,
                           progress=lambda line: print(line, file=sys.stderr, flush=True))
        partial = out.with_name(out.name + ".partial")   # renamed when whole: a stopped run leaves no result
        partial.write_text(json.dumps(result))
        partial.replace(out)
        return 0
    except (MeasurementError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
