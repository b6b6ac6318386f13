"""Quantization-aware training (QAT) and pruning-preserving QAT (PQAT) with TFMOT's default 8-bit scheme.

    dvc exp run -S quantize.layers=dense        # the FireNet study's dense-only QAT

Both return a model still wrapped for QAT (fake-quantization in the graph); `tf.lite.TFLiteConverter` with
`Optimize.DEFAULT` turns it into an int8 file. Save it with `model_io.save_model` (HDF5): the native .keras
format cannot reload the wrappers.

PQAT keeps pruned zeros by multiplying each kernel with a mask taken from the kernel when the wrapper is
built, so a zero gets no gradient and stays zero in the float kernel. The mask is a constant, not a saved
variable: a PQAT model reloaded from disk rebuilds it from freshly initialised weights (all ones), so only
convert a reloaded PQAT model, never fine-tune it further.
"""

import re
from dataclasses import dataclass

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_configs import \
    Default8BitOutputQuantizeConfig
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer

from compresslab.data import shards
from compresslab.models import training
from compresslab.errors import UserError
from compresslab.models.saving import copy_model
from compresslab.settings import Budget, QuantizeConfig
from compresslab.techniques import weights
from compresslab.techniques.layers import has_weights, select_layers

qk = tfmot.quantization.keras
# Layers TFMOT's default 8-bit registry has no entry for, and the config each is quantized with: a squeeze-excite
# Multiply (EfficientNet-B0; tensorflow/model-optimization#733) gets its output quantized, as TFMOT does for Add.
# TFMOT's own config classes, so that quantize_scope reloads the saved model.
QUANTIZE_CONFIGS = {keras.layers.Multiply: Default8BitOutputQuantizeConfig}

# TFMOT folds a BatchNormalization and an activation into the convolution before them (its layout transforms,
# matched by class name) only when they are annotated too: its transforms match annotated layers only. A
# convolution annotated alone has its output fake-quantized before the BatchNorm, which the converter can then
# not fold: MobileNetV2's QAT int8 file kept its 52 BatchNorms as MUL operators and ran 1.3-1.6x slower than its
# float32 file (`make benchmark-qat-folding`). So a selected convolution brings the BatchNorm and activation
# that follow it.
FOLDING_CONVS = ("Conv2D", "DepthwiseConv2D")
FOLDED_INTO_CONV = (keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.Activation)

# TFMOT raises these while applying a scheme to a layer it cannot quantize: a RuntimeError naming the
# layer, or (the prune-preserving registry, for weightless layers) a ValueError naming only the class.
_UNSUPPORTED_NAMED = re.compile(r"Layer (?P<name>[^:\s]+):<class '(?:[\w.]*\.)?(?P<cls>\w+)'> is not supported")
_UNSUPPORTED_CLASS = re.compile(r"unsupported layer <class '(?:[\w.]*\.)?(?P<cls>\w+)'>")


@dataclass
class QatResult:
    """What `quantize_aware` returns.

    Attributes:
      model: the QAT-wrapped, fine-tuned model (convert it with Optimize.DEFAULT for int8).
      history: per-epoch training history.
      quantized_layers: the selected layers that were annotated for quantization, in model order.
    """
    model: keras.Model
    history: dict[str, list[float]]
    quantized_layers: list[str]


@dataclass
class PqatResult:
    """What `pqat` returns.

    Attributes:
      model: the PQAT-wrapped, fine-tuned model.
      history: per-epoch training history.
      pruned_layers: layers whose kernels held zeros in the input model (the ones whose sparsity is tracked).
      sparsity_before, sparsity_after: `weights.sparsity_report` over pruned_layers, before and after PQAT.
      drift: after - before: {'layers': {name: change}, 'overall': change}; 0 means every zero was kept.
    """
    model: keras.Model
    history: dict[str, list[float]]
    pruned_layers: list[str]
    sparsity_before: dict
    sparsity_after: dict
    drift: dict


def _check_flat(model: keras.Model, names, option: str) -> None:
    for name in names:
        if isinstance(model.get_layer(name), keras.Model):
            raise UserError(f"{option}: layer {name!r} is a nested model, which TFMOT cannot quantize: "
                            f"build the model flat (its layers directly in one model)")


def _apply(annotated: keras.Model, scheme: qk.QuantizeScheme, model: keras.Model, option: str,
           fix: str) -> keras.Model:
    """quantize_apply, turning TFMOT's 'layer not supported' errors into a UserError naming the layer."""
    try:
        with qk.quantize_scope():   # the configs of QUANTIZE_CONFIGS, which quantize_apply clones
            return qk.quantize_apply(annotated, scheme)
    except (RuntimeError, ValueError) as err:
        named = _UNSUPPORTED_NAMED.search(str(err))
        by_class = _UNSUPPORTED_CLASS.search(str(err))
        if named:
            what = f"layer {named['name']!r} ({named['cls']})"
        elif by_class:
            found = [layer.name for layer in model.layers if type(layer).__name__ == by_class["cls"]]
            what = f"layer {', '.join(map(repr, found)) or '?'} ({by_class['cls']})"
        else:
            raise
        raise UserError(f"{option}: {what} is not supported by TFMOT's {type(scheme).__name__}: {fix}") from err


def quantize_aware(model: keras.Model, cfg: QuantizeConfig, train: training.Split, val: training.Split, *,
                   batch_size: int, calibration: np.ndarray | None = None) -> QatResult:
    """Quantization-aware fine-tuning of the selected layers with TFMOT's default 8-bit scheme.

    Args:
      model: a trained flat Keras model; it is not modified.
      cfg: the quantize group: layers ('all' | 'dense' | 'conv' | names), epochs, learning_rate.
      train, val: (images, integer labels) for the fine-tune.
      batch_size: the fine-tuning batch size.
      calibration: images that set the ranges before fine-tuning (`start_ranges`); None: TFMOT's initial ones.

    Returns:
      A QatResult holding the QAT-wrapped trained model.
    """
    names = select_layers(model, cfg.layers, "quantize.layers")
    if not any(has_weights(model.get_layer(name)) for name in names):
        # TFMOT accepts it and wraps a neighbour, but no weight of the result is trained for int8.
        raise UserError(f"quantize.layers={list(names)} holds no layer with weights, so QAT would train nothing: "
                        "name dense or conv layers, or use all")
    qat = quantize_layers(model, names, "quantize.layers", "leave it out of quantize.layers")
    wrapped = [layer.layer.name for layer in qat.layers if isinstance(layer, qk.QuantizeWrapper)]
    print(f"quantize: 8-bit QAT of {', '.join(names)} (quantize wrappers on {', '.join(wrapped)})")
    start_ranges(qat, calibration, batch_size, "quantize")
    history = training.fit(qat, train, val, epochs=cfg.epochs, batch_size=batch_size,
                           learning_rate=cfg.learning_rate)
    return QatResult(model=qat, history=history, quantized_layers=names)


def annotate_whole_model(model: keras.Model) -> keras.Model:
    """`model` with every layer annotated for TFMOT's QAT (what PQAT, CQAT and PCQAT quantize), except
    Concatenate layers; a layer of QUANTIZE_CONFIGS gets its config there.

    TFMOT's default 8-bit layout transforms (ConcatTransform) mis-quantize a Concatenate fed by Conv-BN-ReLU
    blocks (reported in the review of tensorflow/model-optimization#282): annotated whole, yolo_grid's scores
    moved by 0.95 before any training, with calibrated ranges, and its PQAT, CQAT and PCQAT never recovered,
    while plain QAT (convolutions only) held. Left unannotated, a Concatenate still converts to an int8
    CONCATENATION, requantizing its inputs. A model without one is annotated by TFMOT's own call, as before.
    """
    if not any(isinstance(layer, (keras.layers.Concatenate, *QUANTIZE_CONFIGS)) for layer in model.layers):
        return qk.quantize_annotate_model(model)
    return keras.models.clone_model(model, clone_function=lambda layer: (
        layer if isinstance(layer, keras.layers.Concatenate) else annotate(layer)))


def annotate(layer: keras.layers.Layer) -> keras.layers.Layer:
    """`layer` annotated for QAT, with its config from QUANTIZE_CONFIGS where TFMOT's registry has none."""
    config = QUANTIZE_CONFIGS.get(type(layer))
    return qk.quantize_annotate_layer(layer, config() if config else None)


def quantize_layers(model: keras.Model, names, option: str, fix: str) -> keras.Model:
    """A copy of `model` with the `names` layers annotated and TFMOT's default 8-bit scheme applied.

    Args:
      model: a flat Keras model; it is not modified.
      names: the layers to quantize, each convolution with the BatchNorm and activation folded into it
        (`with_folded_followers`); TFMOT also wraps a neighbour when it must quantize its output.
      option, fix: the config key and the fix named in the UserError for a layer TFMOT cannot quantize.
    """
    _check_flat(model, names, option)
    wanted = set(with_folded_followers(model, names))
    annotated = keras.models.clone_model(
        copy_model(model),
        clone_function=lambda layer: annotate(layer) if layer.name in wanted else layer)
    return _apply(annotated, qk.default_8bit.Default8BitQuantizeScheme(), model, option, fix)


def with_folded_followers(model: keras.Model, names) -> list[str]:
    """`names` and, after each selected Conv2D or DepthwiseConv2D, the chain of BatchNormalization and
    activation layers it feeds alone (what TFMOT folds into it), in model order."""
    feeder = {}   # a layer with one input: that input's name
    if isinstance(model, keras.Sequential):
        feeder = {layer.name: before.name for before, layer in zip(model.layers, model.layers[1:])}
    else:         # from the functional config
        for layer in model.get_config()["layers"]:
            nodes = layer["inbound_nodes"]
            if len(nodes) == 1 and len(nodes[0]) == 1:
                feeder[layer["name"]] = nodes[0][0][0]
    chain = {name for name in names if type(model.get_layer(name)).__name__ in FOLDING_CONVS}
    wanted = set(names)
    for layer in model.layers:
        if isinstance(layer, FOLDED_INTO_CONV) and feeder.get(layer.name) in chain:
            chain.add(layer.name)
            wanted.add(layer.name)
    return [layer.name for layer in model.layers if layer.name in wanted]


def range_quantizers(model: keras.Model) -> list[tuple[qk.quantizers.Quantizer, dict]]:
    """(quantizer, {'min_var', 'max_var'}) of every int8 range in a model that `quantize_apply` returned.

    TFMOT 0.8.1 keeps them in private attributes: the input QuantizeLayer's `quantizer_vars`, and in each
    QuantizeWrapper `_weight_vars`, the QuantizeAwareActivation's pre/post-activation vars and
    `_output_quantizer_vars`.
    """
    found = []
    for layer in model.layers:
        if isinstance(layer, QuantizeLayer) and layer.quantizer:
            found.append((layer.quantizer, layer.quantizer_vars))
        if isinstance(layer, qk.QuantizeWrapper):
            found += [(quantizer, variables) for _, quantizer, variables in layer._weight_vars]
            for activation in layer._quantize_activations:
                for name in ("_pre_activation_vars", "_post_activation_vars"):
                    if hasattr(activation, name):
                        found.append((activation.quantizer, getattr(activation, name)))
            if layer._output_quantizers:
                found.append((layer._output_quantizers[0], layer._output_quantizer_vars))
    # The collaborative schemes keep more beside the range (PQAT's sparsity mask, CQAT's centroids): ranges only.
    return [(quantizer, {key: variables[key] for key in ("min_var", "max_var") if key in variables})
            for quantizer, variables in found]


def calibration_images(train: training.Split, batches: int, batch_size: int, seed: int) -> np.ndarray:
    """A fixed, seeded sample of `batches` training batches (fewer when the split is smaller)."""
    order = np.random.default_rng(seed).permutation(shards.count(train))
    return shards.take(train, order[:batches * int(batch_size)])


def calibration_of(cfg: QuantizeConfig, train: training.Split, batch_size: int, seed: int) -> np.ndarray | None:
    """The images `quantize.calibration_batches` asks to calibrate QAT's starting ranges on (None for 0)."""
    return calibration_images(train, cfg.calibration_batches, batch_size, seed) if cfg.calibration_batches else None


def start_ranges(model: keras.Model, calibration: np.ndarray | None, batch_size: int, label: str) -> None:
    """Before a QAT-family fine-tune: calibrate the wrapped model's ranges on `calibration` images (None: keep
    TFMOT's initial ranges). TFMOT's [-6, 6] start clips and coarsens activations so much that a wrapped SSDLite
    scored 0.38 validation mAP instead of 0.56 before training, and 4 epochs of QAT did not win it back."""
    if calibration is None:
        return
    calibrate_ranges(model, calibration, batch_size)
    print(f"{label}: ranges calibrated on {len(calibration)} training images before fine-tuning "
          f"(quantize.calibration_batches)")


def calibrate_ranges(model: keras.Model, images: np.ndarray, batch_size: int) -> None:
    """Set the int8 ranges of a `quantize_apply`d model from `images`, as post-training calibration does,
    without training it.

    TFMOT sets ranges only in training-mode passes, and its activation ranges start at [-6, 6] and follow an
    exponential moving average (decay 0.999): after a few passes they are still near [-6, 6], which clips
    large activations and coarsens small ones (the FireNet baseline's last layer then loses 5 pp). So every
    range starts at 0 and, during the passes, each moving-average quantizer runs as TFMOT's AllValuesQuantizer
    (same variables and arguments), which keeps the min/max over all batches seen: the ranges TFLite's
    calibration would pick, and already exact from the first batch on, so a downstream range never sees
    values clipped by an upstream one still warming up. Weight ranges take the kernels' values. Dropout is off
    and BatchNormalization runs in inference mode (trainable False), so the ranges see what inference sees;
    afterwards every other variable (moving statistics, TFMOT's step counters) is put back as it was.

    Args:
      model: a model returned by `quantize_apply`, changed in place (its ranges only).
      images: the calibration images, e.g. a few seeded training batches.
      batch_size: images per training-mode pass.
    """
    ranges = range_quantizers(model)
    range_ids = {id(variable) for _, variables in ranges for variable in variables.values()}
    kept = [(variable, variable.numpy()) for variable in model.variables if id(variable) not in range_ids]
    moving = [q for q, _ in ranges if type(q) is qk.quantizers.MovingAverageQuantizer and not q.per_axis]
    dropouts = [layer for layer in _inner_layers(model) if isinstance(layer, keras.layers.Dropout)]
    norms = [layer for layer in _inner_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    saved_rates, saved_trainable = [layer.rate for layer in dropouts], [layer.trainable for layer in norms]
    for _, variables in ranges:
        for variable in variables.values():
            variable.assign(np.zeros(variable.shape, variable.dtype.as_numpy_dtype))
    try:
        for quantizer in moving:
            quantizer.__class__ = qk.quantizers.AllValuesQuantizer
        for layer in dropouts:
            layer.rate = 0.0
        for layer in norms:
            layer.trainable = False
        for start in range(0, len(images), int(batch_size)):
            model(images[start:start + int(batch_size)], training=True)
    finally:
        for quantizer in moving:
            quantizer.__class__ = qk.quantizers.MovingAverageQuantizer
        for layer, rate in zip(dropouts, saved_rates):
            layer.rate = rate
        for layer, trainable in zip(norms, saved_trainable):
            layer.trainable = trainable
    for variable, value in kept:
        variable.assign(value)


def _inner_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers, each QuantizeWrapper replaced by the layer it wraps."""
    return [layer.layer if isinstance(layer, qk.QuantizeWrapper) else layer for layer in model.layers]


def sparsity_drift(before: dict, after: dict) -> dict:
    """after - before, per layer and overall, for two `weights.sparsity_report`s over the same layers."""
    return {"layers": {name: after["layers"][name] - value for name, value in before["layers"].items()},
            "overall": after["overall"] - before["overall"]}


def pqat(pruned_model: keras.Model, cfg: Budget, train: training.Split, val: training.Split, *,
         batch_size: int, calibration: np.ndarray | None = None) -> PqatResult:
    """Pruning-preserving QAT of a whole pruned (stripped) model, measuring what happens to its zeros.

    Args:
      pruned_model: a pruned model with the pruning wrappers stripped; it is not modified.
      cfg: the pqat group: epochs, learning_rate.
      train, val: (images, integer labels) for the fine-tune.
      batch_size: the fine-tuning batch size.
      calibration: images that set the ranges before fine-tuning (`start_ranges`); None: TFMOT's initial ones.

    Returns:
      A PqatResult with the PQAT-wrapped trained model and the kernel sparsity before, after and its drift.
    """
    _check_flat(pruned_model, [layer.name for layer in pruned_model.layers], "pqat")
    parent = weights.sparsity_report(pruned_model)
    pruned_layers = [name for name, value in parent["layers"].items() if value > 0]
    if not pruned_layers:
        raise UserError(f"pqat: no kernel of model {pruned_model.name!r} holds a zero, so there is no pruning "
                        f"to preserve: give pqat the output of the prune stage")
    before = weights.sparsity_report(pruned_model, pruned_layers)
    annotated = annotate_whole_model(copy_model(pruned_model))
    scheme = qk.collab_opts.Default8BitPrunePreserveQuantizeScheme()
    model = _apply(annotated, scheme, pruned_model, "pqat",
                   "PQAT quantizes every layer, so remove it from the model (normalise pixels in the data "
                   "pipeline, not in the model)")
    print(f"pqat: prune-preserving 8-bit QAT; tracking the zeros of {', '.join(pruned_layers)} "
          f"(sparsity {before['overall']:.3f})")
    start_ranges(model, calibration, batch_size, "pqat")
    history = training.fit(model, train, val, epochs=cfg.epochs, batch_size=batch_size,
                           learning_rate=cfg.learning_rate)
    after = weights.sparsity_report(model, pruned_layers)
    drift = sparsity_drift(before, after)
    print(f"pqat: sparsity {before['overall']:.4f} -> {after['overall']:.4f} (drift {drift['overall']:+.4f})")
    return PqatResult(model=model, history=history, pruned_layers=pruned_layers, sparsity_before=before,
                      sparsity_after=after, drift=drift)
