"""Benchmark: does pruning buy speed? A MobileNetV2 built for XNNPACK's sparse inference, dense and with its 1x1
convolutions 80 % zeros, both float32, timed against each other in alternating rounds in one process.

    make benchmark-sparse     # or: python benchmarks/sparse_inference.py [--alpha 1.0] [--size 224]

The zeros are put in by magnitude directly (what `prune.layers=xnnpack` ends with; latency does not depend on
what the weights learnt). Prints each file's size, whether it qualifies for sparse inference (read from the
file) and the pruned file's latency ratio to the dense one at 1 and 2 threads. Goal (#12): <= 0.7x at 1 thread
where XNNPACK runs sparse; this prints whether this CPU is one (XNNPACK keeps x86 with AVX on dense kernels).
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

import compresslab  # noqa: F401  (sets the Keras flavour before TensorFlow is imported)
import tf_keras as keras

from compresslab.models import zoo
from compresslab.tflite.timing_core import machine_fingerprint
from compresslab.tflite import converter, sparse
from compresslab.tflite import timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--sparsity", type=float, default=0.8)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    model = zoo.mobilenetv2((args.size, args.size, 3), 1000, {"alpha": args.alpha})
    print(f"MobileNetV2 alpha {args.alpha} at {args.size}x{args.size}x3: {zoo.count_parameters(model):,} parameters")
    folder = Path(tempfile.mkdtemp(prefix="compresslab-sparse-"))
    dense = folder / "dense-float32.tflite"
    dense.write_bytes(converter.convert(model, "float32"))
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (1, 1):
            kernel = layer.get_weights()[0]
            kernel[np.abs(kernel) < np.quantile(np.abs(kernel), args.sparsity)] = 0.0
            layer.set_weights([kernel])
    pruned = folder / "pruned-float32.tflite"
    pruned.write_bytes(converter.convert(model, "float32", sparse_weights=True))
    for path in (dense, pruned):
        print(f"  {path.name}: {path.stat().st_size / 2**20:.2f} MB, sparse inference: {sparse.sparse_inference(path)}")
    extensions = machine_fingerprint().get("vector_extensions", "")
    here = sparse.runs_sparse_here(extensions)
    print(f"this CPU: {'XNNPACK can run sparse kernels' if here else 'x86 with AVX: XNNPACK keeps dense kernels'}")
    sample = np.random.default_rng(0).random((1, args.size, args.size, 3), dtype=np.float32)
    for threads in (1, 2):
        ratio = timing.interleaved_ratio(pruned, dense, threads, rounds=20, input_sample=sample)
        print(f"  {threads} thread(s): pruned / dense latency {ratio['ratio']:.3f} "
              f"[{ratio['ratio_p25']:.3f}-{ratio['ratio_p75']:.3f}] (goal <= 0.7 at 1 thread)")


if __name__ == "__main__":
    main()
