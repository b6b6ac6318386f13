"""Transfer learning as practitioners do it: train the new classifier on a frozen pretrained backbone, then
fine-tune everything at a lower learning rate.

    dvc exp run -S model.weights=weights/backbone.keras -S train.freeze_backbone_epochs=3

While frozen, every layer but the classifier (the last weighted layer) has `trainable = False`, which in
tf_keras also runs BatchNormalization in inference mode: the backbone's statistics are not disturbed by the
first steps of a random head. Unfrozen, BatchNormalization trains again, as it would from scratch.
"""

from collections.abc import Callable

import numpy as np
import tf_keras as keras

# The phases, as MLflow tags and history values name them.
FROZEN, FINE_TUNE = "frozen_backbone", "fine_tune"


def trainable_parameters(model: keras.Model) -> int:
    return int(sum(np.prod(weight.shape) for weight in model.trainable_weights))


def set_backbone_frozen(model: keras.Model, frozen: bool) -> None:
    head = [layer for layer in model.layers if layer.weights][-1]
    for layer in model.layers:
        layer.trainable = not frozen or layer is head


def fit_in_phases(model: keras.Model, fit: Callable[..., dict], *, frozen_epochs: int, epochs: int,
                  learning_rate: float, fine_tune_learning_rate: float) -> tuple[dict, dict]:
    """Train `model` with `fit(model, epochs=, learning_rate=)` (training.fit with the rest bound): first
    `frozen_epochs` epochs of the classifier alone, then the whole model for the remaining epochs.

    Returns:
      (history of both phases, each series one after the other plus a `phase` series: 0 frozen, 1 fine-tune;
       {phase: {'trainable_parameters', 'epochs_run'}}).
    """
    phases = {}
    set_backbone_frozen(model, True)
    frozen = fit(model, epochs=frozen_epochs, learning_rate=learning_rate)
    phases[FROZEN] = {"trainable_parameters": trainable_parameters(model), "epochs_run": len(frozen["loss"])}
    set_backbone_frozen(model, False)
    tuned = fit(model, epochs=epochs - frozen_epochs, learning_rate=fine_tune_learning_rate)
    phases[FINE_TUNE] = {"trainable_parameters": trainable_parameters(model), "epochs_run": len(tuned["loss"])}
    history = {key: frozen[key] + tuned[key] for key in frozen if key in tuned}   # in Keras' column order
    history["phase"] = [0.0] * len(frozen["loss"]) + [1.0] * len(tuned["loss"])
    return history, phases
