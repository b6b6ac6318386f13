"""Speed and memory of a .tflite file, measured with the LiteRT interpreter the way a device would run it.

Latency is timed in this process, one `invoke()` at a time. Memory is measured in a fresh child process
that imports only the interpreter and NumPy: in this process TensorFlow (hundreds of MB) would dwarf a
model of a few hundred KB, and peak RSS can only grow, so earlier work would hide the model's own cost.
This module must therefore never import TensorFlow: it is also the child's entry point.
"""

import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from compresslab.tflite import flatbuffer, runtime
from compresslab.errors import UserError, run_main

RANDOM_SEED = 0
MEMORY_RUNS = 10
MEMORY_THREADS = 1


def measure_latency(path: str | os.PathLike, threads: int, *, warmup: int = 10, min_runs: int = 50,
                    min_seconds: float = 1.0, max_runs: int = 2000, input_sample=None) -> dict:
    """Time single-input inference of a .tflite file at a given thread count.

    Runs `warmup` untimed invocations (first calls pay for lazy allocation, XNNPACK weight packing and
    cold caches), then times `invoke()` alone until both `min_runs` runs and `min_seconds` of timed work
    are reached, stopping at `max_runs`. The median is the figure to compare files by: timing noise on a
    shared machine (scheduling, interrupts, frequency changes) only ever adds time and comes in rare
    large spikes, which drag the mean and std but leave the median where most runs are.

    Args:
      path: the .tflite file.
      threads: interpreter threads, >= 1.
      warmup, min_runs, min_seconds, max_runs: the run schedule above.
      input_sample: one real input, float in [0, 1] with the model's input size (a batch dimension of 1
        may be present or not); quantized to the input tensor's scale and zero point when that is an
        integer tensor. None feeds deterministic uniform noise in [0, 1] through the same path.

    Returns:
      {'median_ms', 'p25_ms', 'p75_ms' (the interquartile range: the spread of the runs), 'p90_ms',
       'mean_ms', 'std_ms', 'runs', 'fps' (1000 / median_ms), 'threads'}.
    """
    _check_threads([threads])
    _check_schedule(warmup, min_runs, min_seconds, max_runs)
    interpreter = load_interpreter(path, threads)
    feed_inputs(interpreter, input_sample)
    for _ in range(warmup):
        interpreter.invoke()
    times_ms = _timed_runs(interpreter, min_runs, min_seconds, max_runs)
    median = float(np.median(times_ms))
    return {"median_ms": median, "p25_ms": float(np.percentile(times_ms, 25)),
            "p75_ms": float(np.percentile(times_ms, 75)), "p90_ms": float(np.percentile(times_ms, 90)),
            "mean_ms": float(np.mean(times_ms)), "std_ms": float(np.std(times_ms)),
            "runs": len(times_ms), "fps": 1000.0 / median, "threads": int(threads)}


def latency_by_threads(path: str | os.PathLike, threads: Sequence[int], **kwargs) -> dict[int, dict]:
    """`measure_latency` at each thread count.

    Args:
      path: the .tflite file.
      threads: thread counts, each >= 1, at least one.
      **kwargs: passed to `measure_latency`.

    Returns:
      {threads: measure_latency result}, in the order given.
    """
    counts = _check_threads(threads)
    return {count: measure_latency(path, count, **kwargs) for count in counts}


def interleaved_ratio(path: str | os.PathLike, reference: str | os.PathLike, threads: int, *, rounds: int = 20,
                      runs_per_round: int = 10, warmup: int = 10, input_sample=None) -> dict:
    """Latency of `path` relative to `reference`, both timed in this process in alternating rounds.

    Absolute latency on a shared machine drifts by 2x between runs (frequency, other jobs, cache state),
    so a file's latency is only comparable with another's when both are timed under the same conditions:
    each round times `runs_per_round` invocations of one file, then of the other (ABBA order over
    consecutive rounds, so neither always goes first), and the ratio of the two medians is one sample.

    Args:
      path, reference: .tflite files taking the same input (e.g. a variant and baseline-float32).
      threads: interpreter threads for both.
      rounds, runs_per_round, warmup: the schedule above; warm-up runs of both come first.
      input_sample: as for `measure_latency`.

    Returns:
      {'ratio': median over rounds of median(path) / median(reference), 'ratio_p25', 'ratio_p75': the
       interquartile range of the round ratios, 'rounds'}.
    """
    _check_threads([threads])
    _check_schedule(warmup, runs_per_round, 0.0, runs_per_round)
    if rounds < 1:
        raise UserError(f"latency ratio rounds must be at least 1, got {rounds}")
    pair = []
    for file in (path, reference):
        interpreter = load_interpreter(file, threads)
        feed_inputs(interpreter, input_sample)
        for _ in range(warmup):
            interpreter.invoke()
        pair.append(interpreter)
    ratios = []
    for number in range(rounds):
        order = (0, 1) if number % 2 == 0 else (1, 0)
        medians = {}
        for index in order:
            medians[index] = float(np.median(_timed_runs(pair[index], runs_per_round, 0.0, runs_per_round)))
        ratios.append(medians[0] / medians[1])
    return {"ratio": float(np.median(ratios)), "ratio_p25": float(np.percentile(ratios, 25)),
            "ratio_p75": float(np.percentile(ratios, 75)), "rounds": rounds}


def peak_memory(path: str | os.PathLike, input_sample=None) -> dict:
    """Peak resident memory of running a .tflite file, and the part of it the model itself adds.

    Args:
      path: the .tflite file.
      input_sample: as for `measure_latency`.

    Returns:
      {'peak_rss_mb': peak RSS of a fresh process that loads the model and runs it 10 times at one
       thread, 'baseline_rss_mb': the same process loading no model, 'model_rss_mb': the difference,
       floored at 0 since a tiny model can sit inside the noise}. MB = 2**20 bytes.
    """
    peak = peak_memory_mb(path, input_sample)
    baseline = _baseline_rss_mb()
    return {"peak_rss_mb": peak, "baseline_rss_mb": baseline, "model_rss_mb": max(0.0, peak - baseline)}


def peak_memory_mb(path: str | os.PathLike, input_sample=None) -> float:
    """Peak RSS (MB) of a fresh process that imports LiteRT + NumPy, loads the model and runs it 10 times."""
    path = Path(path)
    flatbuffer.check_file(path)
    if input_sample is None:
        return _run_child([str(path)])["max_rss_mb"]
    with tempfile.TemporaryDirectory() as tmp:
        sample_path = Path(tmp) / "sample.npy"
        np.save(sample_path, np.asarray(input_sample, dtype=np.float32))
        return _run_child([str(path), str(sample_path)])["max_rss_mb"]


def load_interpreter(path: str | os.PathLike, threads: int) -> Interpreter:
    """A LiteRT interpreter for `path` with tensors allocated; UserError when the file is not a model."""
    return runtime.load_interpreter(path, num_threads=int(threads))


def feed_inputs(interpreter: Interpreter, input_sample=None) -> None:
    """Set every input tensor: the first from `input_sample` (or noise), any others from noise."""
    rng = np.random.default_rng(RANDOM_SEED)
    for position, detail in enumerate(interpreter.get_input_details()):
        sample = input_sample if position == 0 else None
        interpreter.set_tensor(detail["index"], make_input(detail, sample, rng))


def make_input(detail: dict, sample=None, rng: np.random.Generator | None = None) -> np.ndarray:
    """An array for one input tensor: `sample` (float in [0, 1]) or uniform noise, in its shape and dtype.

    Args:
      detail: one entry of `interpreter.get_input_details()`.
      sample: float values in [0, 1], any shape with the tensor's number of elements; None for noise.
      rng: noise source; a generator seeded with RANDOM_SEED when None.

    Returns:
      An array of the tensor's shape and dtype, quantized as `runtime.quantize` does for integer inputs.
    """
    shape = tuple(int(size) for size in detail["shape"])
    if sample is None:
        rng = rng if rng is not None else np.random.default_rng(RANDOM_SEED)
        values = rng.random(shape, dtype=np.float32)
    else:
        values = np.asarray(sample, dtype=np.float32)
        if values.size != int(np.prod(shape)):
            raise UserError(f"input sample of shape {values.shape} does not fit model input "
                            f"{detail['name']!r} of shape {list(shape)}: pass one image of the model's size")
        values = values.reshape(shape)
    return runtime.quantize(values, detail)


def _timed_runs(interpreter: Interpreter, min_runs: int, min_seconds: float, max_runs: int) -> np.ndarray:
    times_ms = []
    elapsed = 0.0
    while len(times_ms) < max_runs and (len(times_ms) < min_runs or elapsed < min_seconds):
        start = time.perf_counter()
        interpreter.invoke()
        took = time.perf_counter() - start
        elapsed += took
        times_ms.append(took * 1000.0)
    return np.asarray(times_ms)


def _check_threads(threads: Sequence[int]) -> list[int]:
    counts = list(threads) if threads is not None else []
    if not counts:
        raise UserError("latency threads is empty: list at least one thread count, e.g. [1, 2, 4]")
    bad = [count for count in counts
           if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1]
    if bad:
        raise UserError(f"latency threads {counts} holds {bad}: thread counts must be whole numbers >= 1")
    return [int(count) for count in counts]


def _check_schedule(warmup: int, min_runs: int, min_seconds: float, max_runs: int) -> None:
    if warmup < 0 or min_runs < 1 or min_seconds < 0 or max_runs < min_runs:
        raise UserError(f"latency schedule warmup={warmup}, min_runs={min_runs}, min_seconds={min_seconds}, "
                        f"max_runs={max_runs} is invalid: need warmup >= 0, min_runs >= 1, "
                        f"min_seconds >= 0 and max_runs >= min_runs")


@functools.lru_cache(maxsize=1)
def _baseline_rss_mb() -> float:
    # The baseline depends only on the interpreter and Python, so one child per process is enough.
    return _run_child([])["max_rss_mb"]


def _run_child(args: list[str]) -> dict:
    """Run this module in a fresh interpreter and read back the JSON line it prints last."""
    done = subprocess.run([sys.executable, "-m", "compresslab.tflite.timing", *args],
                          capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if tail.startswith("error: "):
            raise UserError(tail.removeprefix("error: "))
        raise RuntimeError(f"memory-measuring child exited with {done.returncode}: {tail}")
    return json.loads(lines[-1])


def _max_rss_mb() -> float:
    """This process's peak RSS in MB.

    On Linux ru_maxrss survives fork + exec, so a child started from a process holding TensorFlow reports
    the parent's peak (~750 MB in tests) instead of its own; VmHWM belongs to the new address space alone.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    return max_rss / 2**20 if sys.platform == "darwin" else max_rss / 2**10


def _child_main() -> None:
    """Child entry: `python -m compresslab.tflite.timing [MODEL [SAMPLE.npy]]`; no MODEL measures the baseline."""
    args = sys.argv[1:]
    if args:
        sample = np.load(args[1]) if len(args) > 1 else None
        interpreter = load_interpreter(args[0], MEMORY_THREADS)
        feed_inputs(interpreter, sample)
        for _ in range(MEMORY_RUNS):
            interpreter.invoke()
    print(json.dumps({"max_rss_mb": _max_rss_mb(),
                      "tensorflow_imported": any(name.split(".")[0] == "tensorflow" for name in sys.modules)}))


if __name__ == "__main__":
    run_main(_child_main)
