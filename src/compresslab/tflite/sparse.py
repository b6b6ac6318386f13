"""Whether a .tflite file qualifies for XNNPACK's sparse inference, and why not, read from the flatbuffer.

XNNPACK runs a float model's sparse 1x1 convolutions with sparse kernels (in NCHW layout) when the model
has the shape of the Fast Sparse ConvNets paper: it starts with a 3x3 stride-2 convolution over 3 channels,
its 1x1 convolutions are at least 2/3 zeros, and it ends with global average pooling (MEAN). Pruning buys
speed only there (`prune.layers=xnnpack` on `model=mobilenetv2`). XNNPACK also takes that path only where it
is faster than dense: on ARM, and on x86 CPUs without AVX; `runs_sparse_here` says whether this CPU is one.
"""

from pathlib import Path

from compresslab.tflite.flatbuffer import TYPE_NAMES, count_elements, op_name, read_model, stored_tensor

MIN_SPARSITY = 2 / 3      # XNNPACK's sparse kernels pay off from here
ELIGIBLE = "eligible"


def sparse_inference(source: str | Path | bytes) -> str:
    """ELIGIBLE, or 'no: <the first requirement the file misses>'."""
    model, raw = read_model(source)
    graph = model.subgraphs[0]
    producers = {int(out): op for op in graph.operators or () for out in op.outputs}
    live = {int(tensor) for tensor in graph.inputs}
    dynamic = []  # the operators each inference runs, in order (not the load-time weight decoders)
    for op in graph.operators or ():
        if any(int(tensor) in live for tensor in op.inputs if tensor >= 0):
            live.update(int(tensor) for tensor in op.outputs)
            dynamic.append(op)
    if TYPE_NAMES.get(graph.tensors[graph.inputs[0]].type) != "FLOAT32":
        return "no: integer input; XNNPACK's sparse inference runs float32 and float16 models"
    first = next((op for op in dynamic if op_name(model, op) not in ("PAD", "QUANTIZE")), None)
    if first is None or not _is_conv(model, graph, first, kernel=3, stride=2, in_channels=3):
        return "no: it does not start with a 3x3 stride-2 convolution over 3 channels"
    pointwise = [op for op in dynamic if _is_conv(model, graph, op, kernel=1, stride=1)]
    if not pointwise:
        return "no: it has no 1x1 convolution"
    kernels = [stored_tensor(model, graph, producers, op, 1) for op in pointwise]
    if any(kernel is None or TYPE_NAMES.get(kernel.type) not in ("FLOAT32", "FLOAT16") for kernel in kernels):
        return "no: integer weights (int8 or dynamic range); XNNPACK's sparse inference takes float weights"
    sparsities = []
    for kernel in kernels:
        elements, nonzero = count_elements(model, raw, kernel)
        sparsities.append(1 - nonzero / elements)
    if max(sparsities) < MIN_SPARSITY:
        return (f"no: no 1x1 convolution is {MIN_SPARSITY:.0%} zeros (the sparsest is {max(sparsities):.0%}): "
                f"prune them, e.g. prune.layers=xnnpack")
    if not any(op_name(model, op) == "MEAN" for op in dynamic):
        return "no: it does not end with global average pooling (MEAN)"
    return ELIGIBLE


def _is_conv(model, graph, op, *, kernel: int, stride: int, in_channels: int | None = None) -> bool:
    """A CONV_2D with a kernel x kernel window, this stride, and (when given) this many input channels."""
    if op_name(model, op) != "CONV_2D" or len(op.inputs) < 2:
        return False
    weights = graph.tensors[op.inputs[1]].shape  # [out, kh, kw, in]
    options = op.builtinOptions
    return (len(weights) == 4 and tuple(int(size) for size in weights[1:3]) == (kernel, kernel)
            and (in_channels is None or int(weights[3]) == in_channels)
            and (options.strideH, options.strideW) == (stride, stride))


def runs_sparse_here(vector_extensions: str) -> bool:
    """Whether XNNPACK would take its sparse path on this CPU: not on x86 with AVX, where dense is faster."""
    return "avx" not in vector_extensions.split()
