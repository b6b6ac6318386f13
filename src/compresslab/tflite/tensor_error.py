"""Per-tensor quantization error: where a quantized file departs from the float32 file it shares a Keras model with.

Both files run on the same few images with every intermediate tensor kept. Each activation they share (same
name and shape: the TFLite converter and the LiteRT quantizer name an operator's output after the Keras layers
it computes) is compared, the quantized one dequantized with its scale and zero point: signal-to-noise ratio
in dB (10 log10 of the float tensor's energy over the error's), cosine similarity and relative error (the
error's L2 norm over the float tensor's). The tensors with the lowest SNR are where a file lost precision;
errors carry forward, so the first bad tensor in graph order is usually the one to blame. Weights and other
constants are left out (flatbuffer.py reads those); so are tensors only one file has (an int8 file's
QUANTIZE of the input, a float16 file's weight DEQUANTIZE).
"""

from pathlib import Path

import numpy as np

from compresslab.tflite import flatbuffer, runtime

SAMPLES = 8          # images compared (the test split's first ones: the same for every file)
WORST = 5            # tensors the report names per file
TINY = 1e-12         # energy below this is silence: such a tensor (all zeros in both) gets no SNR


def activations(path: Path) -> list[tuple[str, int, tuple]]:
    """(name, index, shape) of each operator output of the main graph that is computed at run time, in graph
    order, leaving out decoded weights (a DEQUANTIZE / DENSIFY of a constant)."""
    model, _ = flatbuffer.read_model(path)
    graph = model.subgraphs[0]
    found = []
    for op in graph.operators:
        decodes_constant = flatbuffer.op_name(model, op) in flatbuffer.WEIGHT_DECODERS and all(
            flatbuffer.is_constant(model, graph.tensors[int(i)]) for i in op.inputs if i >= 0)
        if decodes_constant:
            continue
        for index in op.outputs:
            tensor = graph.tensors[int(index)]
            found.append((flatbuffer.tensor_name(tensor), int(index), tuple(int(d) for d in tensor.shape)))
    return found


def collected(path: Path, images: np.ndarray, wanted: dict[str, int]) -> dict[str, np.ndarray]:
    """The float values of the `wanted` tensors ({name: index}) for each image, stacked: {name: (N, ...)}."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    interpreter = Interpreter(model_path=str(path), num_threads=1, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    source = runtime.model_input(interpreter)
    values = {name: [] for name in wanted}
    for image in images:
        interpreter.set_tensor(source["index"], runtime.quantize(image[None], source))
        interpreter.invoke()
        for name, index in wanted.items():
            values[name].append(runtime.dequantize(interpreter.get_tensor(index), details[index]))
    return {name: np.stack(stacked) for name, stacked in values.items()}


def compare(float_file: Path, quantized_file: Path, images: np.ndarray) -> list[dict]:
    """Each shared activation's error in `quantized_file` against `float_file` on `images`, in graph order."""
    reference = {name: (index, shape) for name, index, shape in activations(float_file)}
    shared = [(name, index) for name, index, shape in activations(quantized_file)
              if name in reference and reference[name][1] == shape]
    images = np.asarray(images[:SAMPLES], dtype=np.float32)
    exact = collected(float_file, images, {name: reference[name][0] for name, _ in shared})
    approximate = collected(quantized_file, images, dict(shared))
    errors = []
    for name, _ in shared:
        truth, got = exact[name].astype(np.float64).ravel(), approximate[name].astype(np.float64).ravel()
        energy, noise = float(truth @ truth), float((truth - got) @ (truth - got))
        norms = float(np.linalg.norm(truth) * np.linalg.norm(got))
        errors.append({"tensor": name.split(";")[0],
                       "snr_db": float(10 * np.log10(energy / max(noise, TINY))) if energy > TINY else None,
                       "cosine": float(truth @ got) / norms if norms > TINY else None,
                       "relative_error": float(np.sqrt(noise / energy)) if energy > TINY else None})
    return errors


def worst(errors: list[dict], count: int = WORST) -> list[dict]:
    """The `count` tensors of lowest SNR (tensors without one, silent in both files, left out)."""
    return sorted((error for error in errors if error["snr_db"] is not None), key=lambda error: error["snr_db"])[:count]
