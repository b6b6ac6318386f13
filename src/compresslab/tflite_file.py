"""Reading and running a .tflite file: the LiteRT interpreter, predictions, and what the stored weights hold.

Predictions go through `ai_edge_litert` (the deprecated tf.lite.Interpreter is never used). Weight
figures are read from the flatbuffer itself, with the schema LiteRT ships, so they count what the file
stores, whatever the runtime later does with it (XNNPACK repacks weights, float16 files are dequantized
at load time).
"""

import gzip
import math
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from compresslab.errors import UserError


class TfliteFileError(UserError):
    """A .tflite file that cannot be read or does not fit the data; the message is one line."""


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


def check_file(path: Path) -> None:
    """Raise TfliteFileError for a missing or empty file, which the interpreter reports obscurely."""
    if not path.is_file():
        raise TfliteFileError(f"{path}: no such TFLite file; run the conversion that writes it")
    if path.stat().st_size == 0:
        raise TfliteFileError(f"{path}: TFLite file is empty; re-run the conversion that writes it")


def single_io(interpreter: Interpreter) -> tuple[dict, dict]:
    """The input and output details of a one-input, one-output model (the image classifiers here)."""
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise TfliteFileError(f"model has {len(inputs)} inputs and {len(outputs)} outputs; only "
                              "single-input, single-output classifiers can be run")
    return inputs[0], outputs[0]


def input_details(path: str | Path) -> dict:
    """What the model in `path` takes as input.

    Returns:
      {'name', 'shape': tuple with None for a free (batch) dimension, 'dtype': e.g. 'float32' or 'int8',
       'scale', 'zero_point': quantization of an integer input (0.0 and 0 for a float input)}.
    """
    inp, _ = single_io(load_interpreter(path))
    scale, zero_point = inp["quantization"]
    return {"name": inp["name"], "shape": signature_shape(inp), "dtype": np.dtype(inp["dtype"]).name,
            "scale": float(scale), "zero_point": int(zero_point)}


def signature_shape(details: dict) -> tuple:
    """A tensor's declared shape, None where the model leaves the size free (the batch after conversion)."""
    return tuple(None if size < 0 else int(size) for size in details["shape_signature"])


def check_input_shape(interpreter: Interpreter, sample_shape) -> None:
    """Raise TfliteFileError unless samples of shape `sample_shape` (no batch axis) fit the model input."""
    inp, _ = single_io(interpreter)
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
    x = np.asarray(x, dtype=np.float32)
    check_input_shape(interpreter, x.shape[1:])
    original = single_io(interpreter)[0]["shape"]
    try:
        return predict_batches(interpreter, x, run_batch_size(interpreter, batch_size, len(x)))
    finally:
        resize_input(interpreter, original)


def predict_batches(interpreter: Interpreter, x: np.ndarray, batch: int) -> np.ndarray:
    """Scores of `x`, `batch` samples per invoke; the input is already allocated for `batch`."""
    inp, out = single_io(interpreter)
    rows = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - len(chunk),) + x.shape[1:], np.float32)])
        interpreter.set_tensor(inp["index"], quantize(chunk, inp))
        interpreter.invoke()
        scores = dequantize(interpreter.get_tensor(out["index"]), out)
        kept = min(batch, len(x) - start)
        rows.append(scores[:kept].reshape(kept, -1))
    if not rows:
        return np.zeros((0, int(np.prod(out["shape"][1:]))), np.float32)
    return np.concatenate(rows)


def run_batch_size(interpreter: Interpreter, batch_size: int, n: int) -> int:
    """Resize the input to the batch `predict` will use (at most `batch_size`, at most n) and return it."""
    inp, _ = single_io(interpreter)
    if signature_shape(inp)[0] is not None:  # batch fixed in the file
        return int(inp["shape"][0])
    batch = max(1, min(int(batch_size), n))
    resize_input(interpreter, [batch, *inp["shape"][1:]])
    return batch


def resize_input(interpreter: Interpreter, shape) -> None:
    """Give the input tensor `shape` and reallocate, unless it has that shape already."""
    inp, _ = single_io(interpreter)
    if list(inp["shape"]) != list(shape):
        interpreter.resize_tensor_input(inp["index"], list(shape))
        interpreter.allocate_tensors()


def quantize(x: np.ndarray, details: dict) -> np.ndarray:
    """`x` in the dtype of the tensor described by `details`, quantized when that dtype is an integer."""
    dtype = np.dtype(details["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype, copy=False)
    scale, zero_point = details["quantization"]
    if scale == 0:
        raise TfliteFileError(f"input tensor {details['name']!r} is {dtype.name} without quantization "
                              "parameters; convert with int8_io or float input")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, details: dict) -> np.ndarray:
    """Float32 values of an output tensor, dequantized when it is an integer tensor."""
    if not np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float32, copy=False)
    scale, zero_point = details["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


# --- Weights and MACs, read from the flatbuffer -------------------------------------------------------

def shape_product(shape) -> int:
    return math.prod(int(size) for size in shape)


# Ops whose constant inputs are the model's parameters: op name -> (activation input slot, weight
# slot, bias slot, MACs of one run from (activation input shape, weight shape, output shape)).
# Weight layouts (TFLite): CONV_2D [O, KH, KW, I/groups]; DEPTHWISE_CONV_2D [1, KH, KW, O];
# FULLY_CONNECTED [O, I]; TRANSPOSE_CONV [O, KH, KW, I]; CONV_3D [KD, KH, KW, I, O];
# CONV_3D_TRANSPOSE [KD, KH, KW, O, I]. A transposed convolution scatters each input element into
# KH*KW*O outputs, so its MACs follow the input size.
WEIGHT_OPS = {
    "CONV_2D": (0, 1, 2, lambda data, w, out: shape_product(out) * shape_product(w[1:])),
    "DEPTHWISE_CONV_2D": (0, 1, 2, lambda data, w, out: shape_product(out) * shape_product(w[1:3])),
    "FULLY_CONNECTED": (0, 1, 2, lambda data, w, out: shape_product(out) * int(w[-1])),
    "TRANSPOSE_CONV": (2, 1, 3, lambda data, w, out: shape_product(data) * shape_product(w[:3])),
    "CONV_3D": (0, 1, 2, lambda data, w, out: shape_product(out) * shape_product(w[:4])),
    "CONV_3D_TRANSPOSE": (2, 1, 3, lambda data, w, out: shape_product(data) * shape_product(w[:4])),
}
# Ops the converter puts between a stored weight and its consumer: float16 and weight-only int8 weights
# are dequantized at load time; sparse-encoded weights are densified.
WEIGHT_DECODERS = ("DEQUANTIZE", "DENSIFY")

OP_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
TYPE_NAMES = {code: name for name, code in vars(schema.TensorType).items() if not name.startswith("_")}
# Stored dtypes of weight tensors (the flatbuffer is little-endian).
STORED_DTYPES = {"FLOAT32": "<f4", "FLOAT16": "<f2", "FLOAT64": "<f8", "INT8": "i1", "UINT8": "u1",
                 "INT16": "<i2", "INT32": "<i4", "INT64": "<i8"}


def weight_stats(source: str | Path | bytes) -> dict:
    """Parameters, sparsity and multiply-accumulates of a .tflite model, read from its stored weights.

    Parameters are the constant weight and bias inputs of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED,
    TRANSPOSE_CONV, CONV_3D and CONV_3D_TRANSPOSE, followed back through DEQUANTIZE / DENSIFY to the
    tensor actually stored, so a float16 or sparse-encoded weight counts once, as its stored elements.
    Counting is per op input: the converter shares one buffer between equal constants (e.g. the all-zero
    biases of a fresh model), which still count once per layer (a layer called twice counts twice).
    The figures are the file's, not Keras': the converter folds batch norms into conv weights, drops
    all-zero dense biases, and adds Conv3D biases with separate ADD ops, which are not counted.

    A stored value counts as zero when it is 0 for a float tensor (float16 included: weights too small
    for float16 are zeros here) and when it equals the tensor's zero point (per channel) for a quantized
    one. Sparsity is over the kernels only: biases are left out of both counts behind it, as in
    `weights.sparsity_report`, because pruning never zeroes them and they would dilute the figure.

    MACs are those of one single-sample run, from the stored tensor shapes: output elements x kernel
    window x input channels per group for convolutions, output elements x inputs for fully connected,
    and input elements x kernel window x output channels for transposed convolutions (products that
    'same' padding crops away included). Ops in control-flow subgraphs count once.

    Args:
      source: a .tflite path, or the flatbuffer bytes.

    Returns:
      {'parameters': weight + bias elements, 'nonzero': those not zero, 'kernel_parameters',
       'kernel_nonzero': the same for the kernels alone, 'sparsity': 1 - kernel_nonzero /
       kernel_parameters (0.0 without kernels), 'macs'}.
    """
    model, raw = read_model(source)
    counts = {"parameters": 0, "nonzero": 0, "kernel_parameters": 0, "kernel_nonzero": 0, "macs": 0}
    for graph in model.subgraphs or ():
        producers = {int(out): op for op in graph.operators or () for out in op.outputs}
        for op in graph.operators or ():
            if op_name(model, op) in WEIGHT_OPS:
                for key, value in op_counts(model, raw, graph, producers, op).items():
                    counts[key] += value
    kernels = counts["kernel_parameters"]
    counts["sparsity"] = 1.0 - counts["kernel_nonzero"] / kernels if kernels else 0.0
    return counts


def op_counts(model, raw: bytes, graph, producers: dict, op) -> dict[str, int]:
    """The weight_stats counts of one weighted op."""
    data_slot, weight_slot, bias_slot, macs = WEIGHT_OPS[op_name(model, op)]
    tensors = graph.tensors
    counts = {"macs": macs(tensors[op.inputs[data_slot]].shape, tensors[op.inputs[weight_slot]].shape,
                           tensors[op.outputs[0]].shape)}
    kernel = stored_tensor(model, graph, producers, op, weight_slot)
    bias = stored_tensor(model, graph, producers, op, bias_slot)
    kernel_counts = count_elements(model, raw, kernel) if kernel is not None else (0, 0)
    bias_counts = count_elements(model, raw, bias) if bias is not None else (0, 0)
    counts["kernel_parameters"], counts["kernel_nonzero"] = kernel_counts
    counts["parameters"] = kernel_counts[0] + bias_counts[0]
    counts["nonzero"] = kernel_counts[1] + bias_counts[1]
    return counts


def read_model(source: str | Path | bytes):
    """Parse a TFLite flatbuffer into the schema's object tree; returns (model, raw bytes)."""
    if isinstance(source, (bytes, bytearray)):
        raw, label = bytes(source), "TFLite bytes"
    else:
        path = Path(source)
        check_file(path)
        raw, label = path.read_bytes(), str(path)
    if len(raw) < 8 or not schema.Model.ModelBufferHasIdentifier(raw, 0):
        raise TfliteFileError(f"{label}: not a TFLite flatbuffer (no TFL3 identifier); "
                              "re-run the conversion that writes it")
    try:
        # The Python flatbuffers reader has no verifier: damaged offsets surface as arbitrary errors.
        return schema.ModelT.InitFromPackedBuf(bytearray(raw), 0), raw
    except Exception as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise TfliteFileError(f"{label}: corrupt TFLite flatbuffer ({reason}); "
                              "re-run the conversion that writes it") from err


def op_name(model, op) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    # Builtin codes above 127 live only in `builtinCode`; older files fill only the deprecated field.
    return OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")


def stored_tensor(model, graph, producers: dict, op, slot: int):
    """The constant tensor feeding input `slot` of `op`, through decoder ops; None when there is none."""
    if slot >= len(op.inputs) or op.inputs[slot] < 0:
        return None  # optional input left out (the converter drops all-zero dense biases)
    index = int(op.inputs[slot])
    while not is_constant(model, graph.tensors[index]):
        producer = producers.get(index)
        if producer is None or op_name(model, producer) not in WEIGHT_DECODERS:
            return None  # computed at run time: not a parameter
        index = int(producer.inputs[0])
    return graph.tensors[index]


def is_constant(model, tensor) -> bool:
    buffer = model.buffers[tensor.buffer] if tensor.buffer > 0 else None
    return buffer is not None and (buffer.data is not None and len(buffer.data) > 0 or buffer.offset > 1)


def stored_values(model, raw: bytes, tensor) -> np.ndarray:
    """The stored values of a constant tensor, flat, in the tensor's dtype."""
    type_name = TYPE_NAMES.get(tensor.type, str(tensor.type))
    if type_name not in STORED_DTYPES:
        raise TfliteFileError(f"weight tensor {tensor_name(tensor)!r} has type {type_name}, "
                              "which weight_stats cannot read")
    buffer = model.buffers[tensor.buffer]
    if buffer.offset > 1:  # models over 2 GB keep buffers after the flatbuffer
        data = raw[buffer.offset:buffer.offset + buffer.size]
    else:
        data = np.asarray(buffer.data, dtype=np.uint8).tobytes()
    return np.frombuffer(data, dtype=STORED_DTYPES[type_name])


def count_elements(model, raw: bytes, tensor) -> tuple[int, int]:
    """(elements, non-zero elements) of a stored weight; zero means its zero point when quantized."""
    values = stored_values(model, raw, tensor)
    elements = shape_product(tensor.shape)
    quant = tensor.quantization
    zero_points = np.zeros(1, np.int64) if quant is None or quant.zeroPoint is None or \
        len(quant.zeroPoint) == 0 else np.asarray(quant.zeroPoint, np.int64)
    if tensor.sparsity is not None:
        # Only the kept values are stored; the rest are zeros by construction.
        if np.unique(zero_points).size > 1:
            raise TfliteFileError(f"sparse weight tensor {tensor_name(tensor)!r} has per-channel zero "
                                  "points, which weight_stats cannot read")
        return elements, int(np.count_nonzero(values != zero_points[0]))
    if values.size != elements:
        raise TfliteFileError(f"weight tensor {tensor_name(tensor)!r} stores {values.size} values for "
                              f"shape {tuple(tensor.shape)}: the file is corrupt")
    if zero_points.size > 1:
        axis_shape = [1] * len(tensor.shape)
        axis_shape[quant.quantizedDimension] = zero_points.size
        zero_points = zero_points.reshape(axis_shape)
        return elements, int(np.count_nonzero(values.reshape(tuple(tensor.shape)) != zero_points))
    return elements, int(np.count_nonzero(values != zero_points[0]))


def tensor_name(tensor) -> str:
    name = tensor.name
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def gzip_size(source: str | Path | bytes, level: int = 9) -> int:
    """Size in bytes of `source` (a file path or bytes) after gzip at `level`: what a download would cost."""
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    return len(gzip.compress(data, compresslevel=level, mtime=0))
