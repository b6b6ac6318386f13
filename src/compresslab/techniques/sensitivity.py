"""Per-layer sensitivity: what each prunable layer costs in validation quality when it alone is pruned, or
alone quantized to int8, the rest of the model left as trained. Quality is the task's primary figure: top-1
accuracy for a classifier, COCO mAP@[.5:.95] for a detector (decoded with its `model.nms`, as `evaluate` decodes
its files); drops are in percentage points of accuracy, or points of mAP x 100.

    dvc repro analysis/dvc.yaml:sensitivity      # or `make sensitivity`: reports/sensitivity/
    dvc exp run -S experiment=auto_prune          # prune.layers: auto prunes only the layers that cost little

Quality is measured on the validation split, never the test split: the layers chosen from these figures
(`prune.layers: auto`) shape the model that the test split then grades, so choosing them on test images
would leak the test set into the result.

Pruning one layer: TFMOT's magnitude rule applied once to the weights TFMOT would prune (the kernel): keep the
round(n * (1 - sparsity)) largest magnitudes, zero the rest. Quantizing one layer: TFMOT's default 8-bit
scheme on that layer alone (`quantization.quantize_layers`), its ranges calibrated on a few seeded training
batches. With `epochs: 0` (the default) nothing is fine-tuned, which is fast and measures how much each layer
relies on its small weights / full precision. With `epochs > 0` every variant gets the same short fine-tune
(the pruned zeros kept at zero), and so does an unmodified reference copy: drops are read against a model
fine-tuned just as long, never against one that trained less.
"""

from dataclasses import dataclass

import numpy as np
import tf_keras as keras

from compresslab.data import shards
from compresslab.data import tfdata
from compresslab.models import training
from compresslab.errors import UserError
from compresslab.models.saving import copy_model
from compresslab.models.seeding import seed_everything
from compresslab.settings import ModelConfig, PruneConfig, SensitivityConfig
from compresslab.techniques import pruning, quantization
from compresslab.techniques.layers import layer_kind, select_layers

PREDICT_BATCH = 256


@dataclass
class LayerSensitivity:
    """One prunable layer's row.

    Attributes (an "accuracy" is the task's primary figure, `Sensitivity.figure`):
      layer, kind: the layer's name and 'dense' / 'conv'.
      weights: how many weights pruning acts on (the kernel; biases are left alone).
      pruned_accuracy: validation accuracy with this layer alone pruned to the target sparsity.
      pruned_drop_pp: reference accuracy minus pruned_accuracy, in percentage points (negative: it gained).
      int8_accuracy, int8_drop_pp: the same with this layer alone quantized to int8; None when not measured.
      int8_skipped: why the int8 figures are None (TFMOT cannot quantize the layer, or quantize is off).
    """
    layer: str
    kind: str
    weights: int
    pruned_accuracy: float
    pruned_drop_pp: float
    int8_accuracy: float | None = None
    int8_drop_pp: float | None = None
    int8_skipped: str | None = None


@dataclass
class Sensitivity:
    """What `measure` returns.

    Attributes:
      figure: what every accuracy field holds: "accuracy" (top-1), or "mAP" for a detector.
      reference_accuracy: validation accuracy of the unmodified model (fine-tuned like the variants when
        epochs > 0); every drop is against it.
      images: validation images scored.
      sparsity, epochs: the settings measured with.
      layers: one row per prunable layer, most sensitive to pruning first (model order among equals).
      unprunable: {layer: why} for dense/conv layers TFMOT cannot prune (they have no row).
    """
    reference_accuracy: float
    images: int
    sparsity: float
    epochs: int
    layers: list[LayerSensitivity]
    unprunable: dict[str, str]
    figure: str = "accuracy"


@dataclass
class AutoChoice:
    """What `choose_layers_to_prune` returns: the layers to prune (model order) and the rows behind the choice."""
    chosen: list[str]
    rows: list[LayerSensitivity]
    max_drop: float
    sparsity: float


def prune_by_magnitude(values: np.ndarray, sparsity: float) -> np.ndarray:
    """`values` with only its k = max(1, round(n * (1 - sparsity))) largest magnitudes kept (ties kept too), as
    TFMOT's pruning mask does for one weight tensor."""
    magnitudes = np.abs(values)
    keep = max(1, round(values.size * (1 - sparsity)))
    threshold = np.sort(magnitudes, axis=None)[::-1][keep - 1]
    return np.where(magnitudes >= threshold, values, np.zeros_like(values))


class KeepPruned(keras.callbacks.Callback):
    """Puts the pruned zeros of some weights back after every training batch, so a fine-tune keeps them."""

    def __init__(self, weights):
        super().__init__()
        self.masks = [(weight, (weight.numpy() != 0).astype(weight.dtype.as_numpy_dtype)) for weight in weights]

    def on_train_batch_end(self, batch, logs=None):
        for weight, mask in self.masks:
            weight.assign(weight * mask)


def correct_predictions(model: keras.Model, split: training.Split) -> int:
    """How many images of `split` the model classifies right (counted, so accuracies are exact fractions).

    Calls the model batch by batch rather than `predict`: every quantized copy is a new model, and `predict`
    would trace a new graph for each (TensorFlow then warns about retracing at every layer)."""
    correct = 0
    for images, labels in tfdata.pipeline(split, PREDICT_BATCH):
        probabilities = model(images, training=False).numpy()
        correct += int(np.sum(np.argmax(probabilities, axis=1) == labels.numpy()))
    return correct


class AccuracyScore:
    """A classifier's validation accuracy, counted in correct images so that every figure is an exact fraction."""
    figure = "accuracy"

    def __init__(self, val: training.Split):
        self.val, self.total = val, shards.count(val)

    def raw(self, model: keras.Model) -> int:
        return correct_predictions(model, self.val)

    def value(self, raw: int) -> float:
        return round(raw / self.total, 6)

    def drop_pp(self, reference: int, raw: int) -> float:
        return round(100 * (reference - raw) / self.total, 4) + 0.0   # + 0.0: no -0.0 in the files


class MapScore:
    """A detector's validation COCO mAP@[.5:.95]; a drop is in mAP points (x 100), like the report's deltas."""
    figure = "mAP"

    def __init__(self, val: training.Split, model_cfg: ModelConfig):
        from compresslab.detection import keras_model  # noqa: PLC0415  (detection only)

        self.val, self.keras_model = val, keras_model
        self.decoder = keras_model.decoder_of(model_cfg, val.meta["image_size"])

    def raw(self, model: keras.Model) -> float:
        # fresh_model: every layer's copy is a new model, which `predict_on_batch` would trace anew.
        return self.keras_model.keras_scores(model, self.val, self.decoder, fresh_model=True)["map"]

    def value(self, raw: float) -> float:
        return round(raw, 6)

    def drop_pp(self, reference: float, raw: float) -> float:
        return round(100 * (reference - raw), 4) + 0.0


def scorer(model: keras.Model, val: training.Split, model_cfg: ModelConfig | None):
    """The task's score of `model` on `val`: MapScore for a detector (its anchors and NMS from `model_cfg`),
    AccuracyScore otherwise."""
    if not training.is_detector(model):
        return AccuracyScore(val)
    if model_cfg is None:
        raise TypeError("a detector's sensitivity needs the model config (its anchors and NMS settings)")
    return MapScore(val, model_cfg)


def prunable_layers(model: keras.Model, label: str, selection="all") -> tuple[list[str], dict[str, str]]:
    """(names of the dense/conv layers of `selection` that TFMOT can prune, {other such layer: why not})."""
    chosen = set(select_layers(model, selection, "sensitivity.layers"))
    names = [layer.name for layer in model.layers if layer.name in chosen and layer_kind(layer) != "other"]
    if not names:
        raise UserError(f"{label}: model {model.name!r} has no dense or conv layer to measure: use a model "
                        f"with weighted layers")
    unprunable = {name: reason for name in names
                  if (reason := pruning.unprunable_reason(model.get_layer(name), None)) is not None}
    return [name for name in names if name not in unprunable], unprunable


def measure(model: keras.Model, train: training.Split, val: training.Split, cfg: SensitivityConfig, *, batch_size: int,
            seed: int, label: str = "sensitivity", model_cfg: ModelConfig | None = None) -> Sensitivity:
    """Prune (and int8-quantize) each prunable layer of `model` alone and measure the validation quality drop.

    Args:
      model: a trained flat Keras model (a classifier or a detector); it is not modified.
      train: the training split: int8 calibration batches and, with epochs > 0, the fine-tune.
      val: the validation split every figure is measured on.
      cfg: the sensitivity group (sparsity, quantize, epochs, learning_rate, calibration_batches, layers).
      batch_size: batch size of calibration passes and fine-tunes.
      seed: seeds the calibration images and every fine-tune alike, so results repeat byte for byte.
      label: the prefix of the progress line printed per layer.
      model_cfg: the model group; a detector is decoded with its anchors and `model.nms`.

    Returns:
      A Sensitivity with one row per prunable layer, most sensitive to pruning first.
    """
    score = scorer(model, val, model_cfg)
    names, unprunable = prunable_layers(model, label, cfg.layers)
    for name, reason in unprunable.items():
        print(f"{label}: no row for {name}: {reason}")
    sparsity, epochs = float(cfg.sparsity), int(cfg.epochs)
    work = copy_model(model)
    original = work.get_weights()

    def fine_tune(target: keras.Model, callbacks=()) -> None:
        if epochs:
            seed_everything(seed)  # every variant sees the same batches and dropout masks
            training.fit(target, train, val, epochs=epochs, batch_size=batch_size,
                         learning_rate=cfg.learning_rate, callbacks=callbacks)

    fine_tune(work)
    reference = score.raw(work)
    calibration = quantization.calibration_images(train, int(cfg.calibration_batches), batch_size, seed)
    rows = []
    for number, name in enumerate(names, 1):
        work.set_weights(original)
        prunable = pruning.prunable_weights(work.get_layer(name))
        for weight in prunable:
            weight.assign(prune_by_magnitude(weight.numpy(), sparsity))
        fine_tune(work, [KeepPruned(prunable)])
        measured = score.raw(work)
        row = LayerSensitivity(layer=name, kind=layer_kind(work.get_layer(name)),
                               weights=sum(int(np.prod(w.shape)) for w in prunable),
                               pruned_accuracy=score.value(measured), pruned_drop_pp=score.drop_pp(reference, measured))
        if cfg.quantize:
            _measure_int8(row, model, name, calibration, fine_tune, score, reference, batch_size)
        else:
            row.int8_skipped = "not measured (quantize is off)"
        rows.append(row)
        print(f"{label}: [{number}/{len(names)}] {_describe(row, sparsity, score.figure)}")
    rows.sort(key=lambda row: -row.pruned_drop_pp)  # stable: model order among equal drops
    return Sensitivity(reference_accuracy=score.value(reference), images=shards.count(val), sparsity=sparsity,
                       epochs=epochs, layers=rows, unprunable=unprunable, figure=score.figure)


def _measure_int8(row: LayerSensitivity, model: keras.Model, name: str, calibration: np.ndarray, fine_tune, score,
                  reference, batch_size: int) -> None:
    """Fill the row's int8 figures, or its int8_skipped reason when TFMOT cannot quantize the layer."""
    try:
        quantized = quantization.quantize_layers(model, [name], "sensitivity.quantize", "measured for pruning only")
    except UserError as err:  # a layer type the scheme does not support, named by quantize_layers
        row.int8_skipped = str(err)
        return
    except (ValueError, RuntimeError) as err:  # e.g. an activation TFMOT cannot quantize (elu, selu)
        row.int8_skipped = f"TFMOT cannot quantize {name}: {str(err).splitlines()[0]}"
        return
    quantization.calibrate_ranges(quantized, calibration, batch_size)
    fine_tune(quantized)
    measured = score.raw(quantized)
    row.int8_accuracy, row.int8_drop_pp = score.value(measured), score.drop_pp(reference, measured)


def _describe(row: LayerSensitivity, sparsity: float, figure: str = "accuracy") -> str:
    unit = "pp" if figure == "accuracy" else "points"
    text = (f"{row.layer} ({row.kind}, {row.weights} weights): pruned to {sparsity:.0%} -> val {figure} "
            f"{row.pruned_accuracy:.4f} (drop {row.pruned_drop_pp:.2f} {unit})")
    if row.int8_accuracy is not None:
        return text + f"; int8 -> {row.int8_accuracy:.4f} (drop {row.int8_drop_pp:.2f} {unit})"
    return text + ("" if row.int8_skipped.startswith("not measured") else f"; int8 skipped: {row.int8_skipped}")


def choose_layers_to_prune(model: keras.Model, train: training.Split, val: training.Split, prune_cfg: PruneConfig, *,
                           batch_size: int, seed: int, model_cfg: ModelConfig | None = None) -> AutoChoice:
    """`prune.layers: auto`: measure every prunable layer pruned alone and keep those that cost little.

    Each layer is pruned alone to the prune config's own final sparsity, without fine-tuning and without the
    int8 arm, on the validation split; a layer is chosen when its drop is at most `prune.auto_max_drop`
    percentage points. The prune stage measures here, in-process, instead of reading
    reports/sensitivity/layers.json: declaring that file as a dep would pull the sensitivity stage into every
    default `dvc repro`, and reading it undeclared would let a stale measurement pick the layers.

    Returns:
      The chosen layers in model order and the measured rows; one line per layer is printed saying why.
    """
    max_drop = float(prune_cfg.auto_max_drop)
    sparsity = prune_cfg.schedule_end
    if not 0 < sparsity < 1:
        raise UserError(f"prune.layers=auto needs a sparsity above 0 to measure, got {sparsity}: "
                        f"raise the prune schedule's final sparsity")
    settings = SensitivityConfig(sparsity=sparsity, quantize=False, epochs=0, learning_rate=prune_cfg.learning_rate,
                                 calibration_batches=1)
    result = measure(model, train, val, settings, batch_size=batch_size, seed=seed, label="prune: auto",
                     model_cfg=model_cfg)
    order = [layer.name for layer in model.layers]
    rows = sorted(result.layers, key=lambda row: order.index(row.layer))
    chosen = [row.layer for row in rows if row.pruned_drop_pp <= max_drop]
    for row in rows:
        verdict = "chosen " if row.layer in chosen else "skipped"
        sign = "<=" if row.layer in chosen else ">"
        print(f"prune: auto: {verdict} {row.layer}: pruned alone to {sparsity:.0%} it costs "
              f"{row.pruned_drop_pp:.2f} pp of validation {result.figure} {sign} prune.auto_max_drop={max_drop:g}")
    if not chosen:
        least = min(result.layers, key=lambda row: row.pruned_drop_pp)
        raise UserError(f"prune.layers=auto: no layer stays within prune.auto_max_drop={max_drop:g} pp at "
                        f"{sparsity:.0%} sparsity (the least sensitive, {least.layer}, costs "
                        f"{least.pruned_drop_pp:.2f} pp): raise prune.auto_max_drop to at least "
                        f"{least.pruned_drop_pp:.2f} or lower the sparsity")
    print(f"prune: auto chose {len(chosen)} of {len(rows)} layers: {', '.join(chosen)}")
    return AutoChoice(chosen=chosen, rows=rows, max_drop=max_drop, sparsity=sparsity)
