"""Reading the kernels of a Keras model, through TFMOT wrappers, to measure what compression did to them.

Measurements here count what is in the weights (zeros, distinct values), never what was asked for: PQAT and
CQAT are known to let pruned zeros and cluster centroids drift.
"""

import numpy as np
import tf_keras as keras

from compresslab.layers import layer_kind

KERNEL_ATTRIBUTES = ("kernel", "depthwise_kernel")


def unwrap(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The layer inside TFMOT's prune / quantize / cluster wrappers (they keep it as `.layer`)."""
    while isinstance(layer, keras.layers.Wrapper):
        layer = layer.layer
    return layer


def kernels(model: keras.Model, layer_names=None) -> dict[str, np.ndarray]:
    """Kernel arrays of the dense and conv layers, keyed by the wrapped layer's own name.

    Args:
      model: a Keras model, plain or with TFMOT wrappers.
      layer_names: restrict to these (inner) layer names; None means every dense/conv layer.

    Returns:
      {layer name: kernel as a NumPy array}, in model order. Biases are left out: pruning and clustering
      leave them alone, and counting them would dilute the figures.
    """
    found = {}
    for layer in model.layers:
        inner = unwrap(layer)
        if layer_kind(inner) == "other" or (layer_names is not None and inner.name not in layer_names):
            continue
        # Read the variable, not `inner.kernel`: a quantize wrapper swaps that attribute for the
        # fake-quantized symbolic tensor while it builds.
        for weight in layer.weights:
            if weight.name.split("/")[-1].split(":")[0] in KERNEL_ATTRIBUTES:
                found[inner.name] = np.asarray(weight.numpy())
                break
    return found


def sparsity_report(model: keras.Model, layer_names=None) -> dict:
    """Share of exactly-zero kernel weights, per layer and over all the layers counted.

    Returns:
      {'layers': {name: sparsity}, 'overall': zeros / weights over those layers, 'weights': count}.
    """
    arrays = kernels(model, layer_names)
    zeros = sum(int(np.count_nonzero(a == 0)) for a in arrays.values())
    total = sum(int(a.size) for a in arrays.values())
    return {"layers": {name: float(np.mean(a == 0)) for name, a in arrays.items()},
            "overall": zeros / total if total else 0.0, "weights": total}


def unique_values_report(model: keras.Model, layer_names=None) -> dict[str, int]:
    """Number of distinct kernel values per layer (a clustered layer holds at most its cluster count)."""
    return {name: int(np.unique(a).size) for name, a in kernels(model, layer_names).items()}
