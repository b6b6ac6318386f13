"""Running a .tflite file with the LiteRT interpreter (`ai_edge_litert`; the deprecated tf.lite.Interpreter is
never used): loading, input checks, batched predictions, (de)quantizing inputs and outputs."""

from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from compresslab.tflite import timing_core
from compresslab.tflite.flatbuffer import TfliteFileError, check_file


def load_interpreter(path: str | Path, num_threads: int = 1) -> Interpreter:
    """Open `path` in the LiteRT interpreter and allocate its tensors.

    Args:
      path: a .tflite file.
      num_threads: CPU threads for the kernels; 1 keeps timings comparable between variants.

    Raises:
      TfliteFileError: the file is missing, empty, not a TFLite flatbuffer, or the runtime cannot run it.
    """
    path = Path(path)
    check_file(path)
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise TfliteFileError(f"{path}: cannot load TFLite model ({reason}); "
                              "re-run the conversion that writes it") from err
    return interpreter


def single_io(interpreter: Interpreter) -> tuple[dict, dict]:
    """The input and output details of a one-input, one-output model (the image classifiers here)."""
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise TfliteFileError(f"model has {len(inputs)} inputs and {len(outputs)} outputs; only "
                              "single-input, single-output classifiers can be run")
    return inputs[0], outputs[0]


def model_input(interpreter: Interpreter) -> dict:
    """The details of a one-input model's input (a classifier or a detector: one image in)."""
    inputs = interpreter.get_input_details()
    if len(inputs) != 1:
        raise TfliteFileError(f"model has {len(inputs)} inputs; only single-input image models can be run")
    return inputs[0]


def detector_outputs(interpreter: Interpreter) -> tuple[dict, dict]:
    """The (boxes, scores) output details of a detector file (models/detectors.py: two outputs).

    The converter names outputs after the Keras output layers in the file's signature (`boxes`, `scores`,
    or `quant_boxes`... after QAT), while the tensors' own names are the graph's; the order of the output
    list is not promised. So the signature decides, and the shape (4 box regressions per anchor) where a file
    has no signature."""
    outputs = interpreter.get_output_details()
    if len(outputs) != 2:
        raise TfliteFileError(f"model has {len(outputs)} outputs; a detector has two (boxes, scores)")
    by_index = {detail["index"]: detail for detail in outputs}
    signatures = interpreter._get_full_signature_list() or {}
    for signature in signatures.values():
        named = signature.get("outputs", {})
        boxes = [index for name, index in named.items() if "box" in name]
        scores = [index for name, index in named.items() if "score" in name]
        if len(boxes) == 1 and len(scores) == 1 and boxes[0] in by_index and scores[0] in by_index:
            return by_index[boxes[0]], by_index[scores[0]]
    boxes = [detail for detail in outputs if detail["shape"][-1] == 4]
    if len(boxes) == 1:
        return boxes[0], next(detail for detail in outputs if detail is not boxes[0])
    return outputs[0], outputs[1]


def input_details(path: str | Path) -> dict:
    """What the model in `path` takes as input.

    Returns:
      {'name', 'shape': tuple with None for a free (batch) dimension, 'dtype': e.g. 'float32' or 'int8',
       'scale', 'zero_point': quantization of an integer input (0.0 and 0 for a float input)}.
    """
    inp = model_input(load_interpreter(path))
    scale, zero_point = inp["quantization"]
    return {"name": inp["name"], "shape": signature_shape(inp), "dtype": np.dtype(inp["dtype"]).name,
            "scale": float(scale), "zero_point": int(zero_point)}


def signature_shape(details: dict) -> tuple:
    """A tensor's declared shape, None where the model leaves the size free (the batch after conversion)."""
    return tuple(None if size < 0 else int(size) for size in details["shape_signature"])


def check_input_shape(interpreter: Interpreter, sample_shape) -> None:
    """Raise TfliteFileError unless samples of shape `sample_shape` (no batch axis) fit the model input."""
    inp = model_input(interpreter)
    expected = signature_shape(inp)[1:]
    given = tuple(int(size) for size in sample_shape)
    if len(given) != len(expected) or any(e is not None and e != g for e, g in zip(expected, given)):
        shown = tuple("?" if e is None else e for e in expected)
        raise TfliteFileError(f"model input takes samples of shape {shown}, data has samples of shape "
                              f"{given}: evaluate with data shaped like the training data")


def predict(interpreter: Interpreter, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Run the model on every sample of `x` and return its float scores, one row per sample.

    The converted model is declared with a free batch dimension (allocated as 1). Invoking it once per
    batch is 1.3x (32x32x3, two convs) to 4.5x (16x16x1, one conv) faster than once per sample with
    identical scores, so the input is resized to `batch_size` for the run and the last partial batch is
    zero-padded; the interpreter is resized back to its original shape afterwards, so a latency
    measurement on the same interpreter still times single samples. A model whose batch size is fixed in
    the file runs in batches of that size. Integer inputs are quantized with the input tensor's scale and
    zero point; integer outputs are dequantized.

    Args:
      interpreter: from `load_interpreter`.
      x: float32 samples (N, H, W, C) in the training scale ([0, 1]).
      batch_size: samples per invoke when the batch dimension is free.

    Returns:
      float32 array (N, classes).
    """
    single_io(interpreter)
    return predict_outputs(interpreter, x, batch_size, outputs=None)[0]


def predict_detector(interpreter: Interpreter, x: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A detector file's raw outputs for every sample of `x`: box regressions (N, anchors, 4) and class scores
    (N, anchors, classes), dequantized; batched as `predict` does."""
    boxes, scores = predict_outputs(interpreter, x, batch_size, outputs=detector_outputs(interpreter))
    return boxes, scores


def predict_outputs(interpreter: Interpreter, x: np.ndarray, batch_size: int, outputs) -> list[np.ndarray]:
    """`outputs` (details; None: the single output) for every sample of `x`, the input resized for the run."""
    x = np.asarray(x, dtype=np.float32)
    check_input_shape(interpreter, x.shape[1:])
    original = model_input(interpreter)["shape"]
    try:
        return predict_batches(interpreter, x, run_batch_size(interpreter, batch_size, len(x)), outputs)
    finally:
        resize_input(interpreter, original)


def predict_batches(interpreter: Interpreter, x: np.ndarray, batch: int, outputs=None) -> list[np.ndarray]:
    """Each of `outputs` for `x`, `batch` samples per invoke; the input is already allocated for `batch`. A
    single output (a classifier's scores) comes flattened to one row per sample."""
    inp = model_input(interpreter)
    flatten = outputs is None
    outputs = [single_io(interpreter)[1]] if outputs is None else list(outputs)
    rows = [[] for _ in outputs]
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - len(chunk),) + x.shape[1:], np.float32)])
        interpreter.set_tensor(inp["index"], quantize(chunk, inp))
        interpreter.invoke()
        kept = min(batch, len(x) - start)
        for found, out in zip(rows, outputs):
            values = dequantize(interpreter.get_tensor(out["index"]), out)[:kept]
            found.append(values.reshape(kept, -1) if flatten else values)
    if not rows[0]:
        return [np.zeros((0, int(np.prod(out["shape"][1:]))) if flatten else (0, *out["shape"][1:]), np.float32)
                for out in outputs]
    return [np.concatenate(found) for found in rows]


def run_batch_size(interpreter: Interpreter, batch_size: int, n: int) -> int:
    """Resize the input to the batch `predict` will use (at most `batch_size`, at most n) and return it."""
    inp = model_input(interpreter)
    if signature_shape(inp)[0] is not None:  # batch fixed in the file
        return int(inp["shape"][0])
    batch = max(1, min(int(batch_size), n))
    resize_input(interpreter, [batch, *inp["shape"][1:]])
    return batch


def resize_input(interpreter: Interpreter, shape) -> None:
    """Give the input tensor `shape` and reallocate, unless it has that shape already."""
    inp = model_input(interpreter)
    if list(inp["shape"]) != list(shape):
        interpreter.resize_tensor_input(inp["index"], list(shape))
        interpreter.allocate_tensors()


def quantize(x: np.ndarray, details: dict) -> np.ndarray:
    """`x` in the dtype of the tensor described by `details`, quantized when that dtype is an integer."""
    try:
        return timing_core.quantize(x, details)
    except timing_core.MeasurementError as err:
        raise TfliteFileError(str(err)) from None


def dequantize(values: np.ndarray, details: dict) -> np.ndarray:
    """Float32 values of an output tensor, dequantized when it is an integer tensor."""
    if not np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float32, copy=False)
    scale, zero_point = details["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


# --- Weights and MACs, read from the flatbuffer -------------------------------------------------------


def delegation(interpreter: Interpreter) -> dict:
    """Which of the model's operators the default delegate (XNNPACK on CPU) runs, read from the execution plan.

    LiteRT 2.3.0's Python API has no per-operator profiler, but where the time goes starts here: every
    operator left outside XNNPACK runs on LiteRT's reference kernels, and each boundary between partitions
    costs a hand-over (and, with several threads, a wake-up of the worker threads).

    Returns:
      {'operators': the model's operators, 'partitions': XNNPACK partitions, 'delegated': operators inside
       them, 'delegated_indices': their indices in execution order, 'outside': names of the operators
       outside, in graph order}.
    """
    nodes = interpreter._get_ops_details()  # the model's operators, then one DELEGATE node per partition
    operators = [node for node in nodes if node["op_name"] != "DELEGATE"]
    producer = {int(tensor): node for node in operators for tensor in node["outputs"]}
    inside = set()
    for partition in (node for node in nodes if node["op_name"] == "DELEGATE"):
        # A partition holds every operator between its inputs and its outputs: walk back from the outputs.
        boundary = {int(tensor) for tensor in partition["inputs"]}
        todo = [int(tensor) for tensor in partition["outputs"]]
        while todo:
            node = producer.get(todo.pop())
            if node is None or node["index"] in inside:
                continue
            inside.add(node["index"])
            todo += [int(tensor) for tensor in node["inputs"] if int(tensor) not in boundary]
    return {"operators": len(operators), "partitions": len(nodes) - len(operators), "delegated": len(inside),
            "delegated_indices": sorted(inside),
            "outside": [node["op_name"] for node in operators if node["index"] not in inside]}
