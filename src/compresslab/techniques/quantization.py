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
from collections.abc import Mapping
from dataclasses import dataclass

import tensorflow_model_optimization as tfmot
import tf_keras as keras

from compresslab import training
from compresslab.techniques import weights
from compresslab.errors import UserError
from compresslab.techniques.layers import select_layers

qk = tfmot.quantization.keras

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


def validate_qat_config(cfg: Mapping, option_prefix: str) -> None:
    """Check a QAT or PQAT config before any training; raise UserError naming the key and the fix.

    Args:
      cfg: mapping with epochs, learning_rate and (QAT only) layers, checked when present.
      option_prefix: 'quantize' or 'pqat', the config group named in errors.
    """
    training.check_budget(option_prefix, cfg)
    if "layers" in cfg:
        _require_layers(cfg, option_prefix)


def _require_layers(cfg: Mapping, option_prefix: str) -> None:
    if cfg.get("layers") is None:
        raise UserError(f"{option_prefix}.layers is not set: use all, dense, conv or a list of layer names")


def _copy_model(model: keras.Model) -> keras.Model:
    """A copy with its own layers: TFMOT's annotate wrappers would otherwise hold the caller's layers."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _check_flat(model: keras.Model, names, option: str) -> None:
    for name in names:
        if isinstance(model.get_layer(name), keras.Model):
            raise UserError(f"{option}: layer {name!r} is a nested model, which TFMOT cannot quantize: "
                            f"build the model flat (its layers directly in one model)")


def _apply(annotated: keras.Model, scheme: qk.QuantizeScheme, model: keras.Model, option: str,
           fix: str) -> keras.Model:
    """quantize_apply, turning TFMOT's 'layer not supported' errors into a UserError naming the layer."""
    try:
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


def quantize_aware(model: keras.Model, cfg: Mapping, train: training.Split, val: training.Split, *,
                   batch_size: int, optimizer: str = "adam") -> QatResult:
    """Quantization-aware fine-tuning of the selected layers with TFMOT's default 8-bit scheme.

    Args:
      model: a trained flat Keras model; it is not modified.
      cfg: QAT config: layers ('all' | 'dense' | 'conv' | names), epochs, learning_rate.
      train, val: (images, integer labels) for the fine-tune.
      batch_size, optimizer: fine-tuning knobs.

    Returns:
      A QatResult holding the QAT-wrapped trained model.
    """
    validate_qat_config(cfg, "quantize")
    _require_layers(cfg, "quantize")
    names = select_layers(model, cfg["layers"], "quantize.layers")
    _check_flat(model, names, "quantize.layers")
    wanted = set(names)
    annotated = keras.models.clone_model(
        _copy_model(model),
        clone_function=lambda layer: qk.quantize_annotate_layer(layer) if layer.name in wanted else layer)
    qat = _apply(annotated, qk.default_8bit.Default8BitQuantizeScheme(), model, "quantize.layers",
                 "leave it out of quantize.layers")
    wrapped = [layer.layer.name for layer in qat.layers if isinstance(layer, qk.QuantizeWrapper)]
    print(f"quantize: 8-bit QAT of {', '.join(names)} (quantize wrappers on {', '.join(wrapped)})")
    history = training.fit(qat, train, val, epochs=cfg["epochs"], batch_size=batch_size,
                           learning_rate=cfg["learning_rate"], optimizer=optimizer)
    return QatResult(model=qat, history=history, quantized_layers=names)


def sparsity_drift(before: dict, after: dict) -> dict:
    """after - before, per layer and overall, for two `weights.sparsity_report`s over the same layers."""
    return {"layers": {name: after["layers"][name] - value for name, value in before["layers"].items()},
            "overall": after["overall"] - before["overall"]}


def pqat(pruned_model: keras.Model, cfg: Mapping, train: training.Split, val: training.Split, *,
         batch_size: int, optimizer: str = "adam") -> PqatResult:
    """Pruning-preserving QAT of a whole pruned (stripped) model, measuring what happens to its zeros.

    Args:
      pruned_model: a pruned model with the pruning wrappers stripped; it is not modified.
      cfg: PQAT config: epochs, learning_rate.
      train, val: (images, integer labels) for the fine-tune.
      batch_size, optimizer: fine-tuning knobs.

    Returns:
      A PqatResult with the PQAT-wrapped trained model and the kernel sparsity before, after and its drift.
    """
    validate_qat_config(cfg, "pqat")
    _check_flat(pruned_model, [layer.name for layer in pruned_model.layers], "pqat")
    parent = weights.sparsity_report(pruned_model)
    pruned_layers = [name for name, value in parent["layers"].items() if value > 0]
    if not pruned_layers:
        raise UserError(f"pqat: no kernel of model {pruned_model.name!r} holds a zero, so there is no pruning "
                        f"to preserve: give pqat the output of the prune stage")
    before = weights.sparsity_report(pruned_model, pruned_layers)
    annotated = qk.quantize_annotate_model(_copy_model(pruned_model))
    scheme = qk.collab_opts.Default8BitPrunePreserveQuantizeScheme()
    model = _apply(annotated, scheme, pruned_model, "pqat",
                   "PQAT quantizes every layer, so remove it from the model (normalise pixels in the data "
                   "pipeline, not in the model)")
    print(f"pqat: prune-preserving 8-bit QAT; tracking the zeros of {', '.join(pruned_layers)} "
          f"(sparsity {before['overall']:.3f})")
    history = training.fit(model, train, val, epochs=cfg["epochs"], batch_size=batch_size,
                           learning_rate=cfg["learning_rate"], optimizer=optimizer)
    after = weights.sparsity_report(model, pruned_layers)
    drift = sparsity_drift(before, after)
    print(f"pqat: sparsity {before['overall']:.4f} -> {after['overall']:.4f} (drift {drift['overall']:+.4f})")
    return PqatResult(model=model, history=history, pruned_layers=pruned_layers, sparsity_before=before,
                      sparsity_after=after, drift=drift)
