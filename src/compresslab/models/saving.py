"""Saving and loading every model variant (float, pruned, clustered, QAT-trained) the same way.

All variants are written in Keras' HDF5 format, under the `.keras` names the pipeline uses. The native
`.keras` zip format cannot hold TFMOT's quantization wrappers: loading a QAT model from it fails with
"Layer 'quantize_layer' expected 5 variables, but received 3" (tf_keras 2.21, TFMOT 0.8.1), while HDF5
round-trips them. One format for all variants keeps loading uniform.
"""

import warnings
from pathlib import Path

import tensorflow_model_optimization as tfmot
import tf_keras as keras

from compresslab.outputs import atomic_path


def save_model(model: keras.Model, path: str | Path) -> None:
    """Write `model` to `path` atomically: a killed stage never leaves a half-written model behind."""
    with atomic_path(path) as partial, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # HDF5 is called "legacy"; it is the format that works here
        model.save(partial, save_format="h5", include_optimizer=False)


def load_model(path: str | Path) -> keras.Model:
    """Load a model written by `save_model`, whichever TFMOT wrappers it holds."""
    with tfmot.quantization.keras.quantize_scope(), tfmot.clustering.keras.cluster_scope(), \
            tfmot.sparsity.keras.prune_scope():
        return keras.models.load_model(path, compile=False)


def copy_model(model: keras.Model) -> keras.Model:
    """A copy with its own layers and the same weights: TFMOT's prune, quantize and cluster wrappers would
    otherwise take (and change) the caller's layers."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
