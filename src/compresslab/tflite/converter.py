"""Converting a Keras model (plain, pruned, clustered or QAT-trained) to a TFLite flatbuffer.

The TFLite converter's four modes, the usual post-training choices:
  float32  no optimisation: the reference file.
  dynamic  dynamic-range quantization: int8 weights, float activations. The converter leaves tensors of
           fewer than 1024 elements in float32 (TF 2.21), so small layers stay float.
  float16  float16 weights, dequantized to float32 at load time (DEQUANTIZE ops in the file).
  int8     full-integer quantization calibrated on representative samples; every op must have an int8
           kernel, else the conversion fails instead of silently keeping float ops.
And two made from the float32 file by the LiteRT quantizer (`ai-edge-quantizer`, Google's maintained quantizer
of LiteRT files; the TFLite converter has no 4-bit weights):
  int4          int4 weights (symmetric, per output channel, two to a byte) of every conv and dense layer,
                activations quantized dynamically at run time, as `dynamic` does with int8.
  int8_weights  weight-only int8 (per channel), dequantized to float32 at load time: float compute, smaller file.
A QAT-trained model (TFMOT `quantize_apply`/`quantize_model`) carries its own ranges and converts to int8
without calibration.

Conversion is deterministic: the same model converts to the same bytes in every mode (QAT and int8 I/O
included), within a process and across processes after an HDF5 round trip (checked with TF 2.21), given
the same representative samples. The file stores tensor names made from the model and layer names, so
equal weights under other auto-generated names ("dense_1") give other bytes.
"""

import contextlib
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow.lite.python import conversion_metadata_schema_py_generated as conversion_metadata
from tensorflow.lite.python.convert_phase import ConverterError
from tensorflow_model_optimization.python.core.clustering.keras.cluster_wrapper import ClusterWeights
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude
from tf_keras.src.saving.legacy.saved_model import save_impl as keras_save_impl
from tf_keras.src.saving.legacy.saved_model import utils as keras_save_options

from compresslab import variants
from compresslab.data.shards import StoredSplit
from compresslab.errors import UserError

# What `convert` makes from a Keras model; `mixed` is allocated per layer on validation data (allocation.py).
MODES = tuple(mode for mode in variants.MODES if mode != "mixed")

# Wrappers that only make sense while training. Converted with them, the file computes every kernel at
# run time (kernel x mask, centroid lookup): no kernel is stored as a constant, the file grows (x5 for
# clustering in a small test) and the weights read back from it say nothing.
TRAINING_WRAPPERS = (PruneLowMagnitude, ClusterWeights)

# What the converter raises when it gives up: its own error, runtime errors from calibration (the
# calibrator runs the half-converted model), and TensorFlow errors from tracing the Keras model.
CONVERTER_FAILURES = (ConverterError, RuntimeError, ValueError, tf.errors.OpError)


# The LiteRT quantizer's recipe (a function of `ai_edge_quantizer.recipe`) for each mode it makes.
QUANTIZER_RECIPES = {"int4": "dynamic_wi4_afp32", "int8_weights": "weight_only_wi8_afp32"}


class ConversionError(Exception):
    """The TFLite converter refused a model; the message is its reason, condensed to one line.

    The text carries no file paths, line numbers or traced-function ids, so the same failure reads the
    same for every variant and mode. The converter's full error is kept as `__cause__`.
    """


def convert(model: keras.Model, mode: str, *, representative: np.ndarray | None = None,
            int8_io: bool = False, qat: bool = False, sparse_weights: bool = False,
            exported: Path | None = None) -> bytes:
    """Convert `model` to a TFLite flatbuffer.

    Args:
      model: a Keras 2 (tf_keras) model, plain or QAT-wrapped. Pruning and clustering wrappers must be
        stripped first (tfmot strip_pruning / strip_clustering).
      mode: one of MODES. A QAT model converts to int8 only.
      representative: float32 samples (N, H, W, C) for int8 calibration, e.g. from `calibration_samples`;
        required for mode 'int8' unless `qat`, used if given for a QAT model, ignored otherwise.
      int8_io: give the int8 file int8 input and output tensors (scale and zero point in the file) instead
        of float32 ones with QUANTIZE/DEQUANTIZE ops at the edges. Ignored by the float modes, so one
        setting can serve every mode of a run.
      qat: `model` was trained with quantization-aware training (holds TFMOT quantize wrappers).
      sparse_weights: store pruned weights in TFLite's sparse format (the converter's EXPERIMENTAL_SPARSITY:
        smaller files, DENSIFY operators at load), the form XNNPACK's sparse inference is documented with.
        The converter's modes only: the quantizer's (int4, int8_weights) store dense weights, whose zeros
        gzip takes.
      exported: `model` already saved by `exported_model`, to convert several modes from one SavedModel;
        None: saved by `exported_model` for this conversion alone.

    Returns:
      The flatbuffer bytes.

    Raises:
      UserError: an unknown mode, a missing or misshaped representative set, or an option that does not
        fit the mode or the model.
      ConversionError: the converter failed; the message is its reason on one line.
    """
    check_options(model, mode, representative, int8_io, qat)
    if mode in QUANTIZER_RECIPES:
        return quantize_file(convert(model, "float32", exported=exported), mode)
    if exported is None:
        with exported_model(model) as folder:   # the signature alone: faster than Keras' own save, same bytes
            if folder is not None:
                return convert(model, mode, representative=representative, int8_io=int8_io, qat=qat,
                               sparse_weights=sparse_weights, exported=folder)
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    else:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(exported))
        # The file's conversion metadata records where the model came from: a Keras model, as
        # `from_keras_model` (which saves the same SavedModel itself) would record, so both give the same bytes.
        converter._metadata.environment.modelType = conversion_metadata.ModelType.KERAS_MODEL  # noqa: SLF001
    if qat:
        configure_qat(converter, representative, int8_io)
    else:
        configure_mode(converter, mode, representative, int8_io)
    if sparse_weights:
        converter.optimizations = [*converter.optimizations, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    with warnings.catch_warnings():
        # Raised for every int8 conversion: the converter would like fixed input ranges, which it does
        # not need once it calibrates from data or reads QAT ranges.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        try:
            return bytes(converter.convert())
        except CONVERTER_FAILURES as err:
            raise ConversionError(converter_reason(err)) from err


def quantize_file(float_file: bytes, mode: str) -> bytes:
    """The float32 flatbuffer `float_file` quantized by the LiteRT quantizer in `mode` (QUANTIZER_RECIPES); the
    same bytes every time."""
    from ai_edge_quantizer import quantizer, recipe  # noqa: PLC0415  (only the modes that need it load it)

    try:
        quantizing = quantizer.Quantizer(bytearray(float_file), getattr(recipe, QUANTIZER_RECIPES[mode])())
        return bytes(quantizing.quantize(enable_progress_report=False).quantized_model)
    except Exception as err:  # noqa: BLE001  (its failures have no common type; the reason is kept as __cause__)
        raise ConversionError(f"the LiteRT quantizer refused the float32 file for mode {mode}: "
                              f"{converter_reason(err)}") from err


@contextlib.contextmanager
def exported_model(model: keras.Model) -> Iterator[Path | None]:
    """`model` saved once as a SavedModel in a temporary folder, for `convert(..., exported=...)` in each mode.

    `from_keras_model` saves and traces the model anew for every conversion (about half a second each);
    saved once with the same options, every mode converts to the same bytes. Yields None when the model
    cannot be saved so: `convert` then takes the Keras path (`from_keras_model`), which falls back to
    freezing the model.

    Only the serving signature is saved, traced as Keras traces it (`default_save_signature`), without the
    per-layer call functions Keras adds to a SavedModel for reloading it as Keras layers (`save_traces`):
    the converter reads the signature alone, so the files are the same bytes, and saving and loading skip a
    trace of every layer. `make benchmark-conversion` times both on 2 cores: save + convert 2.6x faster for
    FireNet's float32 file, 4.1x for SSDLite's QAT int8 file (45 s to 11 s), the same bytes in every case.
    """
    with tempfile.TemporaryDirectory(prefix="compresslab-savedmodel-") as folder:
        try:
            with keras_save_options.keras_option_scope(save_traces=False):
                tf.saved_model.save(model, folder, signatures=keras_save_impl.default_save_signature(model),
                                    options=tf.saved_model.SaveOptions(save_debug_info=True))
        except Exception:  # noqa: BLE001  (any failure: convert through the Keras path, as TF does)
            yield None
            return
        yield Path(folder)


def check_options(model: keras.Model, mode: str, representative, int8_io: bool, qat: bool) -> None:
    """Raise a UserError for options that cannot give the file asked for, before converting."""
    if mode == "mixed":
        raise UserError("mode mixed is chosen per layer on validation data: tflite.allocation.allocate makes it "
                        "from the float32 file (as the convert stage does)")
    if mode not in MODES:
        raise UserError(f"unknown TFLite mode {mode!r}: use one of {', '.join(MODES)}")
    if qat and mode != "int8":
        raise UserError(f"a QAT-trained model converts to mode int8 only, got {mode!r}: use mode int8")
    wrapped = [layer.name for layer in model.layers if isinstance(layer, TRAINING_WRAPPERS)]
    if wrapped:
        raise UserError(f"model {model.name!r} still holds pruning/clustering wrappers "
                        f"({', '.join(wrapped)}): strip them (strip_pruning / strip_clustering) first")
    if qat != is_qat_model(model):
        found = "holds" if is_qat_model(model) else "holds no"
        raise UserError(f"model {model.name!r} {found} QAT quantize wrappers but qat={qat}: "
                        f"set qat to {not qat}")
    if mode == "int8" and not qat and representative is None:
        raise UserError("mode int8 needs representative samples for calibration: pass some training images")
    if representative is not None:
        check_representative(model, representative)


def is_qat_model(model: keras.Model) -> bool:
    """True when `model` holds TFMOT quantize wrappers (the output of quantize_apply)."""
    qat_types = (tfmot.quantization.keras.QuantizeWrapperV2, tfmot.quantization.keras.QuantizeWrapper)
    return any(isinstance(layer, qat_types) for layer in model.layers)


def check_representative(model: keras.Model, representative: np.ndarray) -> None:
    """Raise a UserError unless `representative` is a non-empty batch of model-shaped samples."""
    samples = np.asarray(representative)
    expected = tuple(model.input_shape[1:])
    if samples.ndim != len(expected) + 1 or len(samples) == 0:
        raise UserError(f"representative samples must be a non-empty array of shape (N, "
                        f"{', '.join(map(str, expected))}), got shape {samples.shape}")
    if any(want is not None and want != got for want, got in zip(expected, samples.shape[1:])):
        raise UserError(f"representative samples have shape {samples.shape[1:]} but model "
                        f"{model.name!r} takes {expected}: calibrate with the model's own input data")


def configure_mode(converter: tf.lite.TFLiteConverter, mode: str, representative, int8_io: bool) -> None:
    """Set the converter options of a post-training mode."""
    if mode == "float32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        converter.representative_dataset = representative_dataset(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        set_io_type(converter, int8_io)


def configure_qat(converter: tf.lite.TFLiteConverter, representative, int8_io: bool) -> None:
    """Set the converter options for a QAT model: quantize with the ranges learnt in training."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative is not None:
        # TF 2.21 keeps the learnt ranges either way (same scales with samples of another range);
        # only tensor names and buffer count change.
        converter.representative_dataset = representative_dataset(representative)
    set_io_type(converter, int8_io)


def set_io_type(converter: tf.lite.TFLiteConverter, int8_io: bool) -> None:
    io_type = tf.int8 if int8_io else tf.float32
    converter.inference_input_type = io_type
    converter.inference_output_type = io_type


def representative_dataset(samples: np.ndarray):
    """The converter's calibration callable: yields one float32 sample at a time, with batch 1."""
    samples = np.asarray(samples, dtype=np.float32)

    def generate() -> Iterator[list[np.ndarray]]:
        for i in range(len(samples)):
            yield [samples[i:i + 1]]

    return generate


def calibration_samples(x_train, n: int, seed: int) -> np.ndarray:
    """A fixed, seeded choice of `n` training samples for int8 calibration.

    The chosen indices are sorted, so the samples keep their order in `x_train`; with the same data, n and
    seed the choice (and so the int8 file) repeats exactly. Only the chosen samples are held in memory.

    Args:
      x_train: the training images: a `dataset.StoredSplit`, or an (N, H, W, C) array.
      n: how many samples; at least N means all of them, in order.
      seed: seed of the choice.

    Returns:
      float32 array (min(n, N), H, W, C).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise UserError(f"calibration sample count must be a positive integer, got {n!r}: set it above 0")
    if not isinstance(x_train, StoredSplit):
        x_train = np.asarray(x_train, np.float32)
    if n >= len(x_train):
        chosen = np.arange(len(x_train))
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(len(x_train), size=int(n), replace=False))
    return x_train.take(chosen) if isinstance(x_train, StoredSplit) else x_train[chosen]


# Noise in converter messages that differs between runs and variants: source locations
# ("/path/file.py:11:1: error: ") and traced function ids ("@__inference__wrapped_model_54").
LOCATION = re.compile(r"(?:\S+:\d+:\d+|<unknown>:\d+):\s*(?:error|note|warning):\s*")
FUNCTION_ID = re.compile(r"@?__inference_\w*?_\d+")


def converter_reason(err: Exception) -> str:
    """The converter's reason for `err`, on one line without run-specific details.

    ConverterError lists structured errors (`err.errors`) whose messages start with the reason (e.g.
    "'tf.MatrixDeterminant' op is neither a custom op nor a flex op"); otherwise the first error line of
    the message is used, then its first non-empty line.
    """
    for data in getattr(err, "errors", None) or ():
        reason = clean_line(data.error_message.splitlines()[0] if data.error_message else "")
        if reason:
            return reason
    lines = str(err).splitlines()
    for line in lines:
        if LOCATION.search(line) and "error:" in line:
            reason = clean_line(line[line.rindex("error:") + len("error:"):])
            if reason:
                return reason
    for line in lines:
        reason = clean_line(line)
        if reason:
            return reason
    return type(err).__name__


def clean_line(line: str) -> str:
    line = FUNCTION_ID.sub("", LOCATION.sub("", line))
    return " ".join(line.split()).strip(" :")
