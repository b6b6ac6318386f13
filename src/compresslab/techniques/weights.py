"""Reading the kernels of a Keras model, through TFMOT wrappers, to measure what compression did to them.

Measurements here count what is in the weights (zeros, distinct values), never what was asked for: PQAT and
CQAT are known to let pruned zeros and cluster centroids drift.
"""

import numpy as np
import tf_keras as keras
from tensorflow_model_optimization.python.core.clustering.keras.cluster_wrapper import ClusterWeights

from compresslab.techniques.layers import layer_kind

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
        if isinstance(layer, ClusterWeights):
            clustered = clustered_kernel(layer)
            if clustered is not None:
                found[inner.name] = clustered
                continue
        # Read the variable, not `inner.kernel`: a quantize wrapper swaps that attribute for the
        # fake-quantized symbolic tensor while it builds.
        for weight in layer.weights:
            if weight.name.split("/")[-1].split(":")[0] in KERNEL_ATTRIBUTES:
                found[inner.name] = np.asarray(weight.numpy())
                break
    return found


def clustered_kernel(wrapper: ClusterWeights) -> np.ndarray | None:
    """The kernel a cluster wrapper computes (centroids gathered by index), as strip_clustering writes it.

    The wrapper's `kernel` variable keeps the original, unclustered weights, and the layer's `kernel`
    attribute is a tensor traced inside the last training step, unreadable afterwards. So refresh the
    association the way every forward pass and strip_clustering do (re-pull indices; with
    preserve_sparsity, pin the zero centroid back to 0), then read the attribute.

    Returns:
      The clustered kernel, or None when the wrapper clusters no kernel (e.g. DepthwiseConv2D).
    """
    names = [name for name in wrapper.original_clusterable_weights if name in KERNEL_ATTRIBUTES]
    if not names:
        return None
    wrapper.update_clustered_weights_associations()
    return np.asarray(getattr(wrapper.layer, names[0]))


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
