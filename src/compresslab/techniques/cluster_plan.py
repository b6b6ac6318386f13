"""How many clusters each layer can take: the check a request must pass before any training, and the per-layer
plan that keeps TFMOT's centroid initialisation within what each kernel holds.

TFMOT 0.8.1's sparsity-preserving initialisation splits number_of_clusters - 1 centroids between the negative and
the positive weights in proportion to their counts (rounded half to even), and kmeans++ fails inside TensorFlow
("Expected num_to_sample <= points.rows()") on a side with fewer weights than centroids: a 2-class head pruned to
95 % keeps about a dozen. An all-zero output channel makes per-channel centroids ragged. `plan_clusters` caps each
layer's count to what it can hold, clusters such a Conv2D over its whole kernel, and leaves out a layer with too
few non-zero weights for even three clusters.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tf_keras as keras
from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import ClusteringRegistry

from compresslab.errors import UserError
from compresslab.settings import MIN_CLUSTERS_PRESERVING_SPARSITY


def clusterable_kernels(layer: keras.layers.Layer) -> list[str]:
    """Names of the weights TFMOT clusters in `layer` (e.g. ['kernel']); empty when it clusters none."""
    if not ClusteringRegistry.supports(layer):
        return []
    return list(ClusteringRegistry._weight_names(layer))  # pylint: disable=protected-access


def weights_per_cluster_group(layer: keras.layers.Layer, weight_name: str, per_channel: bool) -> int:
    """How many weights share one set of centroids: the whole tensor, or one output channel of a Conv2D."""
    shape = getattr(layer, weight_name).shape
    size = int(np.prod(shape))
    if per_channel and isinstance(layer, keras.layers.Conv2D):
        return size // int(shape[-1])  # Keras keeps output channels last in the kernel, whatever data_format
    return size


def check_cluster_counts(model: keras.Model, names: Sequence[str], number_of_clusters: int,
                         per_channel: bool = False) -> None:
    """Raise a UserError naming the first selected layer with no more weights than clusters.

    A layer with as many clusters as weights gains nothing, and TFMOT silently skips such a Conv2D, so
    equality is refused too.

    Args:
      model: the model to be clustered.
      names: the selected layer names.
      number_of_clusters: the requested cluster count.
      per_channel: count the weights of one output channel for Conv2D layers.
    """
    for name in names:
        layer = model.get_layer(name)
        for weight_name in clusterable_kernels(layer):
            count = weights_per_cluster_group(layer, weight_name, per_channel)
            if count <= number_of_clusters:
                where = " per output channel" if per_channel and isinstance(layer, keras.layers.Conv2D) else ""
                raise UserError(f"layer {name!r} has {count} {weight_name} weights{where}, not more than "
                                f"cluster.number_of_clusters={number_of_clusters}: lower number_of_clusters "
                                f"or leave {name!r} out of cluster.layers")


def cluster_capacity(kernel: np.ndarray, requested: int, *, preserve_sparsity: bool, per_channel: bool) -> int:
    """The most clusters, at most `requested`, that TFMOT can initialise on `kernel`; 0 when it cannot cluster it.

    A cluster count is feasible when every group of weights that shares centroids (the kernel, or each output
    channel with per-channel clustering) has at least as many distinct values as it gets centroids; with
    sparsity preserved, one centroid is zero and the others are split between negative and positive weights the
    way TFMOT splits them (in proportion to their counts, rounded half to even), and each side must hold its
    share. Below that TFMOT's kmeans++ fails, or gives duplicate centroids that cluster nothing.

    Capping rather than skipping such a layer keeps the result honest: the user asked that each kernel hold at
    most `requested` values, and a capped layer holds fewer; a skipped one would keep every float value it has.

    Args:
      kernel: the layer's kernel, output channels last (Keras' layout).
      requested: cluster.number_of_clusters.
      preserve_sparsity: sparsity-preserving clustering (PCQAT).
      per_channel: the kernel is clustered per output channel (Conv2D with cluster.per_channel).
    """
    groups = [kernel[..., channel] for channel in range(kernel.shape[-1])] if per_channel else [kernel]
    held = [_GroupValues.of(np.asarray(group)) for group in groups]   # counted once, tried at every count
    least = MIN_CLUSTERS_PRESERVING_SPARSITY if preserve_sparsity else 2
    for count in range(requested, least - 1, -1):
        if all(group.holds(count, preserve_sparsity) for group in held):
            return count
    return 0


@dataclass(frozen=True)
class _GroupValues:
    """What one group of weights sharing centroids holds: distinct values, and weights and distinct values on
    each side of zero."""
    distinct: int
    negative: int
    positive: int
    distinct_negative: int
    distinct_positive: int

    @classmethod
    def of(cls, values: np.ndarray) -> "_GroupValues":
        negative, positive = values[values < 0], values[values > 0]
        return cls(int(np.unique(values).size), int(negative.size), int(positive.size),
                   int(np.unique(negative).size), int(np.unique(positive).size))

    def holds(self, count: int, preserve_sparsity: bool) -> bool:
        if not preserve_sparsity:
            return self.distinct >= count
        if self.negative + self.positive == 0:
            return False  # TFMOT gives such a group a single zero centroid, ragged against the others
        non_zero = count - 1
        on_negative = int(np.round(non_zero * self.negative / (self.negative + self.positive)))
        return on_negative <= self.distinct_negative and non_zero - on_negative <= self.distinct_positive


@dataclass(frozen=True)
class LayerClusters:
    """How one layer is clustered: its cluster count, and whether each output channel has its own centroids."""
    count: int
    per_channel: bool


def plan_clusters(model: keras.Model, names: Sequence[str], requested: int, *, preserve_sparsity: bool,
                  per_channel: bool) -> tuple[dict[str, LayerClusters], dict[str, str]]:
    """How each selected layer is clustered (its count capped by `cluster_capacity`), and the layers left out.

    With per-channel clustering, a Conv2D whose sparsest output channel cannot hold the request is clustered
    over its whole kernel instead when that holds more clusters: one set of centroids for the kernel also keeps
    every channel within the requested count.

    Args:
      model: the model to be clustered.
      names: the selected clusterable layers, already checked with check_cluster_counts.
      requested: cluster.number_of_clusters.
      preserve_sparsity, per_channel: as for `cluster`.

    Returns:
      ({layer: LayerClusters}, {layer left unclustered: why}).
    """
    plans, left_out = {}, {}
    for name in names:
        layer = model.get_layer(name)
        kernels = [np.asarray(getattr(layer, weight).numpy()) for weight in clusterable_kernels(layer)]

        def capacity(channels: bool) -> int:
            return min(cluster_capacity(kernel, requested, preserve_sparsity=preserve_sparsity, per_channel=channels)
                       for kernel in kernels)

        channels = per_channel and isinstance(layer, keras.layers.Conv2D)
        count = capacity(channels)
        if channels and count < requested:
            whole_kernel = capacity(False)
            if whole_kernel > count:
                channels, count = False, whole_kernel
        if count:
            plans[name] = LayerClusters(count, channels)
        else:
            nonzero = sum(int(np.count_nonzero(kernel)) for kernel in kernels)
            left_out[name] = (f"only {nonzero} non-zero weight(s), too few to cluster while preserving sparsity "
                              "(frozen while fine-tuning, so its zeros stay)" if preserve_sparsity else
                              "too few distinct weights to cluster")
    return plans, left_out
