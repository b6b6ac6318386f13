"""Choosing which layers of a model a compression technique applies to.

Every technique (pruning, QAT, clustering) takes the same `layers` option: `all`, `dense`, `conv`, or a list
of layer names, so the FireNet study's dense-only / conv-only / all comparisons are one knob each. A detector
(models/detectors.py) also takes `head` (its box and score predictors) and `backbone` (every other convolution,
the neck included).
"""

from collections.abc import Sequence

import tf_keras as keras

from compresslab.errors import UserError

DENSE_TYPES = (keras.layers.Dense,)
CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv2D,
              keras.layers.SeparableConv2D, keras.layers.Conv2DTranspose)
SELECTION_WORDS = ("all", "dense", "conv", "backbone", "head")
# A detector's prediction layers are named boxes_<stride>... and scores_<stride>... (models/detectors.py).
HEAD_PREFIXES = ("boxes_", "scores_")


def layer_kind(layer: keras.layers.Layer) -> str:
    """Return 'dense', 'conv' or 'other' for a layer."""
    if isinstance(layer, DENSE_TYPES):
        return "dense"
    if isinstance(layer, CONV_TYPES):
        return "conv"
    return "other"


def has_weights(layer: keras.layers.Layer) -> bool:
    return bool(layer.trainable_weights)


def select_layers(model: keras.Model, selection: str | Sequence[str], option: str) -> list[str]:
    """Names of the weighted layers of `model` that `selection` picks.

    Args:
      model: a flat Keras model.
      selection: 'all' (every dense and conv layer), 'dense', 'conv', or a list of layer names.
      option: the config key being read (e.g. 'prune.layers'), named in errors.

    Returns:
      Layer names in model order. Raises UserError for an unknown word or name, or an empty match.
    """
    if isinstance(selection, str):
        if selection not in SELECTION_WORDS:
            raise UserError(f"{option}={selection!r} is not a layer selection: use one of "
                            f"{', '.join(SELECTION_WORDS)} or a list of layer names")
        kinds = ("dense", "conv") if selection in ("all", "backbone", "head") else (selection,)
        names = [layer.name for layer in model.layers if layer_kind(layer) in kinds]
        if selection in ("backbone", "head"):
            head = [name for name in names if name.startswith(HEAD_PREFIXES)]
            if not head:
                raise UserError(f"{option}={selection!r} needs a detector (boxes_/scores_ head layers); model "
                                f"{model.name!r} has none: use all, dense, conv or a list of layer names")
            names = head if selection == "head" else [name for name in names if name not in head]
        if not names:
            raise UserError(f"{option}={selection!r} matches no layer of model {model.name!r}: "
                            f"pick 'all' or name layers from {weighted_layer_names(model)}")
        return names
    selection = list(selection)
    if not selection:
        raise UserError(f"{option} is an empty list: name at least one layer, or use 'all'")
    known = {layer.name for layer in model.layers}
    unknown = [name for name in selection if name not in known]
    if unknown:
        raise UserError(f"{option} names layers not in model {model.name!r}: {unknown}; "
                        f"its weighted layers are {weighted_layer_names(model)}")
    wanted = set(selection)
    return [layer.name for layer in model.layers if layer.name in wanted]


def weighted_layer_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers if has_weights(layer)]
