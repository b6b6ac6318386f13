"""Speed and memory of a .tflite file, measured with the LiteRT interpreter the way a device would run it: the
checked entry points the evaluate stage calls. The measurement itself is `timing_core` (self-contained, so the
device stage runs the same code on a board over SSH).

Latency is timed in this process, one `invoke()` at a time. Memory is measured in a fresh child process
that imports only the interpreter and NumPy: in this process TensorFlow (hundreds of MB) would dwarf a
model of a few hundred KB, and peak RSS can only grow, so earlier work would hide the model's own cost.
"""

import functools
import os
from collections.abc import Sequence

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from compresslab.tflite import flatbuffer, runtime, timing_core as core
from compresslab.errors import UserError

RANDOM_SEED = core.RANDOM_SEED


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
    return core.latency(interpreter, threads, warmup=warmup, min_runs=min_runs, min_seconds=min_seconds,
                        max_runs=max_runs)


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
        pair.append(interpreter)
    return core.ratio(pair, rounds=rounds, runs_per_round=runs_per_round, warmup=warmup)


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
    flatbuffer.check_file(path)
    try:
        return core.peak_rss_mb(path, input_sample)
    except core.MeasurementError as err:
        raise UserError(str(err)) from None


def load_interpreter(path: str | os.PathLike, threads: int) -> Interpreter:
    """A LiteRT interpreter for `path` with tensors allocated; UserError when the file is not a model."""
    return runtime.load_interpreter(path, num_threads=int(threads))


def feed_inputs(interpreter: Interpreter, input_sample=None) -> None:
    """Set every input tensor: the first from `input_sample` (or noise), any others from noise."""
    try:
        core.feed_inputs(interpreter, input_sample)
    except core.MeasurementError as err:
        raise UserError(str(err)) from None


def make_input(detail: dict, sample=None, rng: np.random.Generator | None = None) -> np.ndarray:
    """An array for one input tensor (see `timing_core.make_input`); UserError for a sample that does not fit."""
    try:
        return core.make_input(detail, sample, rng)
    except core.MeasurementError as err:
        raise UserError(str(err)) from None


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
    return core.peak_rss_mb()
