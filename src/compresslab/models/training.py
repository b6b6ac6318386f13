"""Fitting a Keras model: the one training loop every stage (baseline and fine-tuning) goes through."""

import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from compresslab.data import tfdata
from compresslab.data.shards import StoredSplit
from compresslab.errors import UserError
from compresslab.settings import OPTIMIZERS, POSITIVE

# A prepared split streamed from its shards, or (images, labels) arrays held in memory (tests, small tools).
Split = StoredSplit | tuple[np.ndarray, np.ndarray]


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """The Keras optimizer `train.optimizer` names (one of settings.OPTIMIZERS)."""
    return getattr(keras.optimizers, OPTIMIZERS[name])(learning_rate=learning_rate)


def check_positive(option: str, value) -> None:
    """Raise a UserError unless `value` (the argument `option` of `fit`) is a positive number: fit is also
    called directly (tests, tools) with numbers no schema has seen."""
    accepts, message = POSITIVE
    if not accepts(value):
        raise UserError(message.format(key=option, value=value))


def is_detector(model: keras.Model) -> bool:
    """A detector has two outputs, box regressions then class scores (models/detectors.py); a classifier one."""
    return len(model.outputs) == 2


def compile_model(model: keras.Model, optimizer: str = "adam", learning_rate: float = 1e-3) -> None:
    """Compile for the model's task, its variables created up front: a classifier for integer labels and softmax
    outputs, tracking accuracy; a detector with the focal and box losses (detection/targets.py), whose targets
    its splits build (`shards.StoredSplit.targets`)."""
    if is_detector(model):
        from compresslab.detection.targets import detection_losses  # noqa: PLC0415  (detectors only)

        losses = detection_losses(int(model.outputs[1].shape[-1]))
        # A list in output order, not a dict by name: TFMOT's wrappers rename the output layers (quant_scores).
        model.compile(optimizer=make_optimizer(optimizer, learning_rate), loss=[losses["boxes"], losses["scores"]])
        return
    model.compile(optimizer=make_optimizer(optimizer, learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    create_training_variables(model)


def create_training_variables(model: keras.Model) -> None:
    """Create the optimizer's slots and the loss and metric trackers now rather than in the first step.

    Keras creates them lazily, inside the first call of its train and test functions, and a tf.function that
    creates variables is traced twice. Each trace of a QAT- or clustering-wrapped model takes seconds (2 s of
    a 10 s CQAT stage); created here, every function is traced once. The variables and the steps are the
    same, so the results are too (the same bytes). Models without symbolic outputs keep Keras' lazy path.
    """
    if not model.outputs or len(model.outputs) != 1:
        return
    model.optimizer.build(model.trainable_variables)
    labels = tf.zeros([1], tf.int32)   # integer labels, one per image: what selects the sparse metrics
    if not model.compiled_loss.built:
        model.compiled_loss.build(model.outputs[0])
    if not model.compiled_metrics.built:
        model.compiled_metrics.build(model.outputs[0], labels)


def fit(model: keras.Model, train: Split, val: Split, *, epochs: int, batch_size: int,
        learning_rate: float, optimizer: str = "adam", patience: int | None = None,
        reduce_lr_patience: int | None = None, callbacks: Sequence[keras.callbacks.Callback] = (),
        compile: bool = True) -> dict[str, list[float]]:
    """Fit `model` on `train`, validating on `val` each epoch.

    Args:
      model: the model to fit, in place.
      train, val: the splits (see `Split`), read through `tfdata.pipeline`; train shuffled (and augmented
        when its `augment` says so) each epoch.
      epochs, batch_size, learning_rate, optimizer: the usual knobs.
      patience: stop after this many epochs without val_loss improving and restore the best weights;
        None or 0 disables early stopping.
      reduce_lr_patience: halve the learning rate after this many epochs without val_loss improving (down
        to 1/64 of the start), so training settles into a minimum instead of stopping beside it; None or 0
        keeps the rate constant.
      callbacks: extra callbacks (pruning needs its step callback).
      compile: set False when the caller compiled already (a wrapper that needs its own compile).

    Returns:
      The per-epoch history: {'loss': [...], 'accuracy': [...], 'val_loss': [...], 'val_accuracy': [...],
      'epoch_seconds': [...]}, plus 'lr' when the rate is scheduled.
    """
    check_positive("epochs", epochs)
    check_positive("batch_size", batch_size)
    check_positive("learning_rate", learning_rate)
    if compile:
        compile_model(model, optimizer, learning_rate)
    callbacks = list(callbacks)
    if reduce_lr_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                           patience=int(reduce_lr_patience),
                                                           min_lr=learning_rate / 64))
    if patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(patience),
                                                       restore_best_weights=True))
    timer = EpochTimer()
    history = model.fit(tfdata.pipeline(train, batch_size, training=True),
                        validation_data=tfdata.pipeline(val, batch_size), epochs=int(epochs),
                        callbacks=[*callbacks, timer], verbose=2)
    # A detector's per-output losses are named after its output layers, which TFMOT's QAT wrappers rename
    # (quant_boxes_loss): one name per figure, so the phases of a stage (pcqat) and the stages line up.
    return {**{key.replace("quant_", ""): [float(v) for v in values] for key, values in history.history.items()},
            "epoch_seconds": timer.seconds}


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of each epoch (validation included): where a stage's time goes, per epoch."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


def convergence(history: dict[str, list[float]], max_epochs: int) -> dict:
    """When and why a fit stopped: epochs run, the epoch whose weights were kept (lowest val_loss), and
    whether early stopping ended it before `max_epochs`."""
    val_loss = history.get("val_loss") or []
    epochs_run = len(history.get("loss") or [])
    return {"epochs_run": epochs_run, "max_epochs": int(max_epochs),
            "best_epoch": int(min(range(len(val_loss)), key=val_loss.__getitem__)) + 1 if val_loss else epochs_run,
            "stopped_early": int(epochs_run < max_epochs)}


def evaluate(model: keras.Model, split: Split, batch_size: int = 256) -> dict[str, float]:
    """Loss and accuracy of a compiled classifier on a split; a detector's loss only (its mAP is scored from
    decoded boxes: detection/coco_metrics.py)."""
    scores = model.evaluate(tfdata.pipeline(split, batch_size), verbose=0)
    if is_detector(model):
        return {"loss": float(scores[0])}
    loss, accuracy = scores
    return {"loss": float(loss), "accuracy": float(accuracy)}

