"""Where a .tflite file's time goes, per operator and per operator type.

LiteRT 2.3.0's Python API binds no per-operator profiler (`libLiteRt.so` has one; nothing in `ai_edge_litert`
reaches it), so the time is measured from outside: the model is cut after each operator (the operators up to
it kept, its outputs made the model's outputs: LiteRT runs every operator of the plan, so the cut must drop the
rest), every cut is timed in this process in interleaved rounds, and an operator's time is how much its
addition raises the median latency. The first operator's figure includes the cost of one `invoke`.

Each cut is delegated to XNNPACK afresh, so a partition boundary can move with the cut, and timing noise can
make a cheap operator's increment negative (shown as 0): the per-operator figures are estimates that add up
to about the whole model's median. What they are for is to show which operators dominate, and whether those
run inside XNNPACK or on LiteRT's reference kernels.
"""

import time
from collections.abc import Sequence
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from compresslab.errors import UserError
from compresslab.tflite import runtime
from compresslab.tflite.timing import feed_inputs

MIN_ROUNDS = 5
RUNS_PER_ROUND = 5


def cut_models(path: str | Path) -> dict[int, bytes]:
    """{k: flatbuffer} for each operator k of the main subgraph that depends on the model's input: operators
    0..k, with operator k's outputs as the model's outputs. Operators on constants alone (a float16 file's
    weight DEQUANTIZE) run once when the model is prepared, not per inference, and get no cut."""
    model = schema.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    subgraph = model.subgraphs[0]
    operators = list(subgraph.operators)
    live = {int(tensor) for tensor in subgraph.inputs}
    cuts = {}
    for k, operator in enumerate(operators):
        if not any(int(tensor) in live for tensor in operator.inputs if tensor >= 0):
            continue
        live.update(int(tensor) for tensor in operator.outputs if tensor >= 0)
        subgraph.operators = operators[:k + 1]
        subgraph.outputs = [int(tensor) for tensor in operator.outputs if tensor >= 0]
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        cuts[k] = bytes(builder.Output())
    return cuts


def operator_profile(path: str | Path, threads: int = 1, input_sample=None, seconds: float = 0.5) -> dict:
    """Time per operator and per operator type of one .tflite file, at `threads` threads, timing the cuts for
    about `seconds` (at least MIN_ROUNDS rounds).

    Returns:
      {'threads', 'rounds', 'total_ms' (the whole model's median), 'delegated_share' (of the time, in
       operators XNNPACK runs), 'operators': [{'index', 'op', 'delegated', 'ms'}] in execution order,
       'by_type': [{'op', 'count', 'ms', 'share', 'delegated'}], most time first}.
    """
    whole = runtime.load_interpreter(path, threads)
    delegated = set(runtime.delegation(whole)["delegated_indices"])
    names = [node["op_name"] for node in whole._get_ops_details() if node["op_name"] != "DELEGATE"]
    cuts = cut_models(path)
    interpreters = []
    for content in cuts.values():
        interpreter = Interpreter(model_content=content, num_threads=threads)
        interpreter.allocate_tensors()
        feed_inputs(interpreter, input_sample)
        interpreter.invoke()  # warm-up: first-run allocations and XNNPACK's weight packing
        interpreters.append(interpreter)
    medians, rounds = time_interleaved(interpreters, seconds)
    increments = dict(zip(cuts, np.maximum(np.diff(np.concatenate([[0.0], medians])), 0.0)))
    operators = [{"index": k, "op": name, "delegated": k in delegated, "ms": round(float(increments.get(k, 0.0)), 5)}
                 for k, name in enumerate(names)]
    total = float(medians[-1])
    by_type: dict[str, dict] = {}
    for row in operators:
        entry = by_type.setdefault(row["op"], {"op": row["op"], "count": 0, "ms": 0.0, "delegated": 0})
        entry["count"] += 1
        entry["ms"] += row["ms"]
        entry["delegated"] += int(row["delegated"])
    types = sorted(by_type.values(), key=lambda entry: -entry["ms"])
    for entry in types:
        entry.update(ms=round(entry["ms"], 5), share=round(entry["ms"] / total, 4) if total > 0 else 0.0)
    inside, summed = (sum(row["ms"] for row in operators if row["delegated"]), sum(row["ms"] for row in operators))
    return {"threads": threads, "rounds": rounds, "total_ms": round(total, 5),
            "delegated_share": round(inside / summed, 4) if summed > 0 else 0.0, "operators": operators,
            "by_type": types}


def try_profile(path: str | Path, threads: int, input_sample, seconds: float) -> dict:
    """`operator_profile`, or {'error': why} when LiteRT cannot run a cut of this file: a profile is an
    explanation, and must never cost the file its other figures."""
    try:
        return operator_profile(path, threads, input_sample, seconds)
    except (RuntimeError, ValueError, UserError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        print(f"evaluate: no per-operator profile of {Path(path).name}: {reason}")
        return {"error": reason}


def time_interleaved(interpreters: Sequence, seconds: float) -> tuple[np.ndarray, int]:
    """Median latency (ms) of each interpreter, and the rounds timed: each round visits every interpreter in
    turn (starting from a different one each round), so drift on a shared machine hits all alike."""
    samples: list[list[float]] = [[] for _ in interpreters]
    started, rounds = time.perf_counter(), 0
    while rounds < MIN_ROUNDS or time.perf_counter() - started < seconds:
        shift = rounds % len(interpreters)
        for index in list(range(shift, len(interpreters))) + list(range(shift)):
            for _ in range(RUNS_PER_ROUND):
                begin = time.perf_counter()
                interpreters[index].invoke()
                samples[index].append((time.perf_counter() - begin) * 1000.0)
        rounds += 1
    return np.asarray([np.median(times) for times in samples]), rounds
