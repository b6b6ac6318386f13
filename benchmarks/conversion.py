"""What the convert stage spends on saving the model: Keras' full SavedModel (every layer's call traced, as
`tf.saved_model.save` does by default) against the serving signature alone (`converter.exported_model`).

    make benchmark-conversion   # or: python benchmarks/conversion.py

Builds models with seeded random weights (conversion time does not depend on training): FireNet (the default
model) and SSDLite-MobileNetV2 (the detection studies' model), each plain and QAT-wrapped, 64x64 RGB. For each
file, times save + convert both ways in this one process, alternating, and checks the two give the same bytes.
Prints seconds and the ratio old / new; the ratio is what carries to another machine.
"""

import tempfile
import time
from pathlib import Path

import numpy as np

import compresslab  # noqa: F401, I001  (prepares the environment before TensorFlow is imported)
import tensorflow_model_optimization as tfmot
from compresslab.models import zoo
from compresslab.techniques import quantization
from compresslab.tflite import converter

quantize = tfmot.quantization.keras
SHAPE = (64, 64, 3)
ROUNDS = 2


def with_layer_traces(model, mode, qat, representative) -> bytes:
    """The convert stage before: a SavedModel as `tf.saved_model.save` writes a Keras model by default."""
    import tensorflow as tf  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as folder:
        tf.saved_model.save(model, folder, options=tf.saved_model.SaveOptions(save_debug_info=True))
        return converter.convert(model, mode, representative=representative, qat=qat, exported=Path(folder))


def signature_only(model, mode, qat, representative) -> bytes:
    with converter.exported_model(model) as exported:
        return converter.convert(model, mode, representative=representative, qat=qat, exported=exported)


def timed(function, *args) -> tuple[float, bytes]:
    start = time.perf_counter()
    flatbuffer = function(*args)
    return time.perf_counter() - start, flatbuffer


def main() -> None:
    representative = np.random.default_rng(0).random((16, *SHAPE), dtype=np.float32)
    print(f"{'file':<30} {'before s':>9} {'after s':>8} {'ratio':>6}  same bytes")
    for name, task, classes in (("firenet", "classification", 2), ("ssdlite_mobilenetv2", "detection", 10)):
        model = zoo.build_model({"name": name}, SHAPE, classes, task)
        with quantize.quantize_scope():   # every layer annotated, as PQAT, CQAT and PCQAT wrap it
            qat = quantize.quantize_apply(quantization.annotate_whole_model(model))
        for label, keras_model, mode, is_qat in ((f"{name}-float32", model, "float32", False),
                                                 (f"{name}-int8", model, "int8", False),
                                                 (f"{name}-qat-int8", qat, "int8", True)):
            before, after, same = [], [], True
            for _ in range(ROUNDS):   # alternating, so drift in the machine's speed hits both
                seconds, old = timed(with_layer_traces, keras_model, mode, is_qat, representative)
                before.append(seconds)
                seconds, new = timed(signature_only, keras_model, mode, is_qat, representative)
                after.append(seconds)
                same = same and old == new
            print(f"{label:<30} {min(before):>9.1f} {min(after):>8.1f} {min(before) / min(after):>5.1f}x  {same}")


if __name__ == "__main__":
    main()
