"""Benchmark: what folding BatchNorm into QAT's convolutions buys. For each BatchNorm architecture, QAT of
`quantize.layers=all` with the convolutions' BatchNorm and activation annotated (what `quantize` does since
`with_folded_followers`) and without them (before), each converted to int8 and timed against the float32 file
in alternating rounds in one process.

    make benchmark-qat-folding     # or: python benchmarks/qat_folding.py [--size 96]

Seeded random weights, no QAT training: operators and latency do not depend on what the weights learnt (the
ranges are calibrated on random images, as `quantize.calibration_batches` would). Prints each file's size,
its MUL and ADD count (an unfolded BatchNorm stays a MUL) and its latency ratio to float32 at 1 thread.
"""

import argparse
import collections
import tempfile
from pathlib import Path

import numpy as np

import compresslab  # noqa: F401, I001  (sets the Keras flavour before TensorFlow is imported)
import tf_keras as keras

from compresslab.models import zoo
from compresslab.models.saving import copy_model
from compresslab.techniques import quantization
from compresslab.techniques.layers import select_layers
from compresslab.tflite import converter, flatbuffer, timing

MODELS = ("mobilenetv2", "efficientnet_lite0", "efficientnet_b0")


def operators(path: Path) -> collections.Counter:
    model, _ = flatbuffer.read_model(path)
    return collections.Counter(flatbuffer.op_name(model, op) for op in model.subgraphs[0].operators)


def qat_file(model, images, folded: bool, path: Path) -> Path:
    names = select_layers(model, "all", "quantize.layers")
    if folded:
        qat = quantization.quantize_layers(model, names, "quantize.layers", "")
    else:   # what quantize_layers did before: the selected convolutions and dense layers alone annotated
        wanted = set(names)
        annotated = keras.models.clone_model(copy_model(model), clone_function=lambda layer: (
            quantization.annotate(layer) if layer.name in wanted else layer))
        with quantization.qk.quantize_scope():
            qat = quantization.qk.quantize_apply(annotated)
    quantization.calibrate_ranges(qat, images, 16)
    path.write_bytes(converter.convert(qat, "int8", qat=True, representative=images[:16]))   # as the stage does
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="compresslab-qat-folding-"))
    images = np.random.default_rng(0).random((32, args.size, args.size, 3), dtype=np.float32)
    print(f"{'file':<34} {'bytes':>10} {'MUL':>4} {'ADD':>4}  int8 / float32 latency at 1 thread [IQR]")
    for name in MODELS:
        keras.utils.set_random_seed(0)
        model = zoo.build_model({"name": name}, (args.size, args.size, 3), 10)
        float32 = folder / f"{name}-float32.tflite"
        float32.write_bytes(converter.convert(model, "float32"))
        for label, folded in (("qat-int8 before", False), ("qat-int8 folded", True)):
            path = qat_file(model, images, folded, folder / f"{name}-{label.replace(' ', '-')}.tflite")
            ops = operators(path)
            ratio = timing.interleaved_ratio(path, float32, 1, rounds=args.rounds, input_sample=images[:1])
            print(f"{name + ' ' + label:<34} {path.stat().st_size:>10,} {ops['MUL']:>4} {ops['ADD']:>4}  "
                  f"{ratio['ratio']:.2f} [{ratio['ratio_p25']:.2f}-{ratio['ratio_p75']:.2f}]")


if __name__ == "__main__":
    main()
