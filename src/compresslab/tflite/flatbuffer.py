"""What a .tflite file stores, read from the flatbuffer with the schema LiteRT ships: weights, sparsity,
MACs, sizes. These count what the file holds, whatever the runtime later does with it (XNNPACK repacks
weights, float16 files are dequantized at load time)."""

import gzip
import math
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from compresslab.errors import UserError


class TfliteFileError(UserError):
    """A .tflite file that cannot be read or does not fit the data; the message is one line."""


def check_file(path: Path) -> None:
    """Raise TfliteFileError for a missing or empty file, which the interpreter reports obscurely."""
    if not path.is_file():
        raise TfliteFileError(f"{path}: no such TFLite file; run the conversion that writes it")
    if path.stat().st_size == 0:
        raise TfliteFileError(f"{path}: TFLite file is empty; re-run the conversion that writes it")


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


# The axis of each weighted op's kernel that holds its output channels (TFLite layouts, above).
OUTPUT_CHANNEL_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0, "TRANSPOSE_CONV": 0,
                       "CONV_3D": 4, "CONV_3D_TRANSPOSE": 3}


def kernel_channel_unique_values(source: str | Path | bytes) -> dict[str, int]:
    """The most distinct stored values in any output channel of each weighted op's kernel, in graph order.

    What clustering leaves in the file: a kernel clustered into k centroids stores at most k values per
    output channel, also after int8 quantization with per-channel scales (over the whole kernel such a
    file holds more). A sparse-encoded kernel counts its kept values and zero, over the whole tensor.

    Returns:
      {kernel tensor name: count}.
    """
    model, raw = read_model(source)
    found = {}
    for graph in model.subgraphs or ():
        producers = {int(out): op for op in graph.operators or () for out in op.outputs}
        for op in graph.operators or ():
            name = op_name(model, op)
            if name not in WEIGHT_OPS:
                continue
            kernel = stored_tensor(model, graph, producers, op, WEIGHT_OPS[name][1])
            if kernel is None:
                continue
            values = stored_values(model, raw, kernel)
            if kernel.sparsity is not None or values.size != shape_product(kernel.shape):
                found[tensor_name(kernel)] = int(np.unique(values).size) + 1
                continue
            channels = np.moveaxis(values.reshape(tuple(kernel.shape)), OUTPUT_CHANNEL_AXIS[name], 0)
            found[tensor_name(kernel)] = max(int(np.unique(channel).size) for channel in channels)
    return found


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
    if type_name not in STORED_DTYPES and type_name != "INT4":
        raise TfliteFileError(f"weight tensor {tensor_name(tensor)!r} has type {type_name}, "
                              "which weight_stats cannot read")
    buffer = model.buffers[tensor.buffer]
    if buffer.offset > 1:  # models over 2 GB keep buffers after the flatbuffer
        data = raw[buffer.offset:buffer.offset + buffer.size]
    else:
        data = np.asarray(buffer.data, dtype=np.uint8).tobytes()
    if type_name == "INT4":
        return unpack_int4(data, shape_product(tensor.shape))
    return np.frombuffer(data, dtype=STORED_DTYPES[type_name])


def unpack_int4(data: bytes, elements: int) -> np.ndarray:
    """Signed 4-bit values stored two to a byte, the low nibble first (LiteRT's packing), as int8."""
    packed = np.frombuffer(data, dtype=np.uint8)
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=1).reshape(-1)[:elements].astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)


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
