"""Weight clustering, cluster-preserving QAT (CQAT) and sparsity-preserving clustering + CQAT (PCQAT).

Every result carries what the weights hold afterwards (distinct values, zeros), measured with
`compresslab.weights`, next to what was asked for. TFMOT 0.8.1 quirks this module works around:

- Wrapping a layer in `ClusterWeights` changes that layer (its kernel leaves `trainable_weights`), so the
  caller's model is cloned with its weights before any wrapping.
- `cluster_weights` silently leaves a Conv2D unclustered for per-channel clustering when the layer has no
  bias (it counts channels from `trainable_weights[-1]`, which is then the kernel). Wrappers are built
  directly instead, after `check_cluster_counts` has done the weight-count check correctly.
- The CQAT quantize registry hands one weight quantizer to every layer of a type, and the first layer
  without zeros switches `preserve_sparsity` off on it for all later layers: a pruned head after an
  unpruned Dense lost all its zeros. Each layer gets its own quantizer copy here.
- A CQAT wrapper holds extra variables (centroids, original weights, indices) that its saved config cannot
  rebuild, so an HDF5 reload fails; `strip_clustering_cqat` drops them and leaves a plain QAT model.
- Sparsity-preserving centroid initialisation fails inside TensorFlow when a layer holds fewer non-zero weights
  than centroids on a side of zero: `cluster_plan` caps each layer's count to what it can hold.
"""

import contextlib
import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.clustering.keras.cluster_wrapper import ClusterWeights
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
    cluster_preserve_quantize_registry as cluster_preserve)
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    prune_preserve_quantize_registry as prune_preserve)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantize_registry

from compresslab.models import training
from compresslab.errors import UserError
from compresslab.models.saving import copy_model
from compresslab.settings import CENTROID_INITS, Budget, ClusterConfig, PcqatConfig
from compresslab.techniques import quantization, weights
from compresslab.techniques.cluster_plan import (LayerClusters, check_cluster_counts, clusterable_kernels,
                                                  plan_clusters)
from compresslab.techniques.layers import select_layers

DEFAULT_CENTROID_INIT = "kmeans++"


@dataclass
class ClusterResult:
    """A clustered model, stripped of its wrappers, and what its kernels hold.

    unique_values counts distinct values over a whole kernel; with per-channel clustering each output
    channel has its own centroids, so channel_unique_values (the most in any one channel) is the figure
    bounded by number_of_clusters. layer_clusters is the cluster count each clustered layer got: the request,
    or less where the layer's weights could not hold it (`cluster_capacity`). skipped_layers names selected
    layers left unclustered, with why.
    """
    model: keras.Model
    history: dict[str, list[float]]
    clustered_layers: list[str]
    requested_clusters: int
    unique_values: dict[str, int]
    channel_unique_values: dict[str, int]
    sparsity: dict
    skipped_layers: dict[str, str]
    layer_clusters: dict[str, int]
    whole_kernel_layers: list[str]

    @property
    def capped_layers(self) -> dict[str, int]:
        """The clustered layers that got fewer clusters than requested, with the count they got."""
        return {name: count for name, count in self.layer_clusters.items() if count < self.requested_clusters}

    def plan_measurements(self) -> dict:
        """For the stage's metrics: how many layers got fewer clusters than asked or none, and each clustered
        layer's cluster count (per layer, so it goes to layers.json and MLflow, not `dvc exp show`)."""
        return {"capped_layers": len(self.capped_layers), "unclustered_layers": len(self.skipped_layers),
                "whole_kernel_layers": len(self.whole_kernel_layers), "layer_clusters": self.layer_clusters}

    def notes(self, stage: str) -> list[str]:
        """One log line per capped or unclustered layer, for the stage's output."""
        lines = [f"{stage}: layer {name!r} holds too few distinct weights for "
                 f"cluster.number_of_clusters={self.requested_clusters}: clustered into {count} clusters"
                 for name, count in self.capped_layers.items()]
        lines += [f"{stage}: layer {name!r} has an output channel too sparse for per-channel clustering: "
                  f"clustered over its whole kernel into {self.layer_clusters[name]} clusters"
                  for name in self.whole_kernel_layers]
        return lines + [f"{stage}: WARNING layer {name!r} left unclustered: {why}"
                        for name, why in self.skipped_layers.items()]


@dataclass
class CqatResult:
    """A cluster-preserving QAT model (QAT wrappers kept for conversion) and how its kernels moved.

    drift maps each layer to the mean and max absolute change of its kernel from the parent's.
    """
    model: keras.Model
    history: dict[str, list[float]]
    unique_values_before: dict[str, int]
    unique_values_after: dict[str, int]
    channel_unique_values_before: dict[str, int]
    channel_unique_values_after: dict[str, int]
    sparsity_before: dict
    sparsity_after: dict
    drift: dict[str, dict[str, float]]


@dataclass
class PcqatResult:
    """Both PCQAT stages: sparsity-preserving clustering of the pruned parent, then sparsity-preserving CQAT."""
    parent_sparsity: dict
    cluster: ClusterResult
    cqat: CqatResult

    @property
    def model(self) -> keras.Model:
        return self.cqat.model


def reject_wrapped(model: keras.Model, what: str) -> None:
    """Raise a UserError if `model` still holds TFMOT wrappers: these stages start from stripped models."""
    wrapped = sorted({type(layer).__name__ for layer in model.layers if isinstance(layer, keras.layers.Wrapper)})
    if wrapped:
        raise UserError(f"the {what} model {model.name!r} still holds {', '.join(wrapped)} wrappers: "
                        "pass the stripped model its stage saved")


def clusterable_selection(model: keras.Model, cfg: ClusterConfig, option: str) -> tuple[list[str], dict[str, str]]:
    """Resolve `layers` to the names TFMOT can cluster, and the selected ones it cannot, with the reason.

    Words ('all', 'dense', 'conv') skip layers whose weights TFMOT leaves alone (DepthwiseConv2D); a layer
    named in a list must be clusterable.
    """
    selection = cfg.layers or "all"
    names, skipped = [], {}
    for name in select_layers(model, selection, option):
        layer = model.get_layer(name)
        if clusterable_kernels(layer):
            names.append(name)
            continue
        reason = f"TFMOT 0.8.1 clusters no weight of a {type(layer).__name__}"
        if not isinstance(selection, str):
            raise UserError(f"{option} names {name!r}, but {reason}: leave it out of the list")
        skipped[name] = reason
    if not names:
        raise UserError(f"{option}={selection!r} selects no layer TFMOT can cluster in model {model.name!r} "
                        f"(skipped: {skipped}): pick dense or conv layers")
    return names, skipped


def wrap_for_clustering(model: keras.Model, names: Sequence[str] | Mapping[str, int], cfg: ClusterConfig, *,
                        preserve_sparsity: bool = False) -> keras.Model:
    """A copy of `model` with the named layers in TFMOT cluster wrappers, ready to fine-tune.

    Args:
      model: a plain Keras model (functional or Sequential); it is left unchanged.
      names: layers to cluster, already checked with check_cluster_counts, each with cfg's number_of_clusters
        and per_channel; or {layer: LayerClusters} from `plan_clusters`.
      cfg: the cluster.* keys (number_of_clusters, centroid_init, per_channel).
      preserve_sparsity: keep zero weights at zero (a zero centroid that never moves).

    Returns:
      The wrapped copy.
    """
    fresh = copy_model(model)
    plans = dict(names) if isinstance(names, Mapping) else dict.fromkeys(
        names, LayerClusters(int(cfg.number_of_clusters), bool(cfg.per_channel)))
    init = getattr(tfmot.clustering.keras.CentroidInitialization,
                   CENTROID_INITS[cfg.centroid_init or DEFAULT_CENTROID_INIT])

    def wrap(layer):
        if layer.name not in plans:
            return layer
        return ClusterWeights(layer, plans[layer.name].count, init, preserve_sparsity=preserve_sparsity,
                              cluster_per_channel=plans[layer.name].per_channel)

    return keras.models.clone_model(fresh, clone_function=wrap)


def channel_unique_values(model: keras.Model, layer_names=None) -> dict[str, int]:
    """Most distinct kernel values in any one output channel (the last kernel axis), per layer."""
    return {name: max(int(np.unique(kernel[..., channel]).size) for channel in range(kernel.shape[-1]))
            for name, kernel in weights.kernels(model, layer_names).items()}


def cluster(model: keras.Model, cfg: ClusterConfig, train: training.Split, val: training.Split, *, batch_size: int,
            preserve_sparsity: bool = False, epochs: int | None = None) -> ClusterResult:
    """Cluster the selected layers' weights, fine-tune, and strip the wrappers.

    Args:
      model: a trained plain Keras model; it is left unchanged.
      cfg: the cluster group.
      train, val: (images, integer labels) for fine-tuning.
      batch_size: fine-tuning batch size.
      preserve_sparsity: sparsity-preserving clustering (for a pruned model): zeros stay zeros; then
        cfg.number_of_clusters must be at least settings.MIN_CLUSTERS_PRESERVING_SPARSITY (the pcqat stage reads the
        cluster and pcqat groups together, and `settings.read` checks it).
      epochs: overrides cfg.epochs (pcqat passes pcqat.cluster_epochs).

    Returns:
      ClusterResult with the stripped model and the distinct values / sparsity its kernels hold.
    """
    reject_wrapped(model, "input")
    names, skipped = clusterable_selection(model, cfg, "cluster.layers")
    per_channel = bool(cfg.per_channel)
    check_cluster_counts(model, names, cfg.number_of_clusters, per_channel)
    plans, left_out = plan_clusters(model, names, int(cfg.number_of_clusters),
                                    preserve_sparsity=preserve_sparsity, per_channel=per_channel)
    wrapped = wrap_for_clustering(model, plans, cfg, preserve_sparsity=preserve_sparsity)
    # With sparsity preserved, a layer that holds zeros and is not clustered (left out above, or not selected by
    # cluster.layers) is frozen while fine-tuning: nothing else would keep its zeros at zero.
    frozen = [name for name, kernel in weights.kernels(model).items()
              if preserve_sparsity and name not in plans and np.any(kernel == 0)]
    for name in frozen:
        wrapped.get_layer(name).trainable = False
    history = training.fit(wrapped, train, val, epochs=int(epochs or cfg.epochs), batch_size=batch_size,
                           learning_rate=cfg.learning_rate)
    stripped = tfmot.clustering.keras.strip_clustering(wrapped)
    for name in frozen:
        # Trainable again for what follows: CQAT keeps each layer's zeros with its sparsity masks, and
        # quantize_apply copies weights in model order, which a frozen layer changes (its kernel got another
        # layer's values).
        stripped.get_layer(name).trainable = True
    clustered = list(plans)
    return ClusterResult(model=stripped, history=history, clustered_layers=clustered,
                         requested_clusters=int(cfg.number_of_clusters),
                         unique_values=weights.unique_values_report(stripped, clustered),
                         channel_unique_values=channel_unique_values(stripped, clustered),
                         sparsity=weights.sparsity_report(stripped), skipped_layers={**skipped, **left_out},
                         layer_clusters={name: plan.count for name, plan in plans.items()},
                         whole_kernel_layers=[name for name, plan in plans.items()
                                              if per_channel and not plan.per_channel
                                              and isinstance(model.get_layer(name), keras.layers.Conv2D)])


class _PerLayerClusterPreserveRegistry(cluster_preserve.Default8bitClusterPreserveQuantizeRegistry):
    """TFMOT's CQAT registry, but each layer gets its own weight quantizer (see the module docstring), and a
    layer that was not clustered gets plain 8-bit QAT.

    TFMOT would take the distinct values of an unclustered Conv2D's output channel (a 1x1 convolution over 96
    inputs has at most 96) for its centroids: it then computes every weight's distance to every one of them at
    each step (minutes per epoch and gigabytes for a detector clustered only in its head) and pins the layer to
    those values. Under PCQAT an unclustered layer keeps its zeros (prune-preserving QAT) instead."""

    def __init__(self, preserve_sparsity, clustered=None):
        super().__init__(preserve_sparsity)
        self.preserve_sparsity = preserve_sparsity
        self.clustered = None if clustered is None else frozenset(clustered)

    def get_quantize_config(self, layer):
        if self.clustered is not None and layer.name not in self.clustered:
            plain = (prune_preserve.Default8bitPrunePreserveQuantizeRegistry() if self.preserve_sparsity else
                     default_8bit_quantize_registry.Default8BitQuantizeRegistry())
            return plain.get_quantize_config(layer)
        config = super().get_quantize_config(layer)
        quantizer = getattr(config, "weight_quantizer", None)
        if isinstance(quantizer, cluster_preserve.ClusterPreserveDefaultWeightsQuantizer):
            config.weight_quantizer = copy.copy(quantizer)
        return config


class _PerLayerClusterPreserveScheme(tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme):
    def __init__(self, preserve_sparsity, clustered=None):
        super().__init__(preserve_sparsity)
        self.clustered = clustered

    def get_quantize_registry(self):
        return _PerLayerClusterPreserveRegistry(self.preserve_sparsity, self.clustered)


def clustered_selection(model: keras.Model, cfg: ClusterConfig) -> list[str] | None:
    """The layers `cluster.layers` names on `model`; None when it names them all (unset, or `all`), so that a
    fully clustered model keeps TFMOT's own rule (and the same bytes)."""
    if cfg.layers in (None, "all"):
        return None
    return select_layers(model, cfg.layers, "cluster.layers")


def quantize_preserving_clusters(model: keras.Model, preserve_sparsity: bool = False,
                                 clustered: Sequence[str] | None = None) -> keras.Model:
    """The QAT model of a clustered `model`, whose training keeps each kernel on its centroids.

    TFMOT reads the centroids from the distinct values of each kernel (per output channel for Conv2D) and
    lets them train; kernels with more than 1024 distinct values get plain QAT, and so do the layers not in
    `clustered` (None: every layer is taken as clustered, TFMOT's own rule).
    """
    annotated = quantization.annotate_whole_model(model)
    with tfmot.quantization.keras.quantize_scope():   # the configs of quantization.QUANTIZE_CONFIGS
        return tfmot.quantization.keras.quantize_apply(annotated, _PerLayerClusterPreserveScheme(
            preserve_sparsity, clustered))


def kernel_drift(parent: dict[str, np.ndarray], child: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean and max absolute kernel change, per layer present in both."""
    drift = {}
    for name in parent.keys() & child.keys():
        change = np.abs(child[name] - parent[name])
        drift[name] = {"mean_abs": float(change.mean()), "max_abs": float(change.max())}
    return dict(sorted(drift.items()))


@contextlib.contextmanager
def expected_gradient_warning_silenced():
    """Drop TensorFlow's "Gradients do not exist for variables [...kernel]" warning during CQAT.

    The cluster-preserving scheme trains the centroids and writes the gathered kernel into the kernel
    variable itself, so that variable never gets a gradient: the warning is expected, and repeated every
    step it would bury the stage's output. Other warnings pass.
    """
    class DropGradientWarning(logging.Filter):
        def filter(self, record):
            return "Gradients do not exist for variables" not in record.getMessage()

    logger, dropper = tf.get_logger(), DropGradientWarning()
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


def cqat(clustered_model: keras.Model, cfg: Budget, train: training.Split, val: training.Split, *,
         batch_size: int, preserve_sparsity: bool = False, clustered: Sequence[str] | None = None,
         calibration: np.ndarray | None = None) -> CqatResult:
    """Cluster-preserving quantization-aware training of a clustered model.

    During training TFMOT writes the centroid-gathered kernel into each layer's kernel variable, which is
    what the converter reads; that is what is measured (it trails the trainable centroids by the last
    optimizer step).

    Args:
      clustered_model: a stripped clustered model (ClusterResult.model); it is left unchanged.
      cfg: the cqat group, or the pcqat one (epochs, learning_rate).
      train, val: (images, integer labels) for fine-tuning.
      batch_size: fine-tuning batch size.
      preserve_sparsity: also keep zero weights at zero (PCQAT).
      clustered: the layers the cluster step clustered (`cluster.layers`); the others get plain QAT. None: all.
      calibration: images that set the ranges before fine-tuning (`quantization.start_ranges`); None: TFMOT's.

    Returns:
      CqatResult with the QAT-wrapped model (clustering variables stripped, so it saves, reloads and
      converts) and the distinct values, sparsity and drift of its kernels against the parent's.
    """
    reject_wrapped(clustered_model, "clustered")
    parent = weights.kernels(clustered_model)
    qat_model = quantize_preserving_clusters(clustered_model, preserve_sparsity, clustered)
    quantization.start_ranges(qat_model, calibration, batch_size, "pcqat" if preserve_sparsity else "cqat")
    with expected_gradient_warning_silenced():
        history = training.fit(qat_model, train, val, epochs=int(cfg.epochs), batch_size=batch_size,
                               learning_rate=cfg.learning_rate)
    stripped = tfmot.experimental.combine.strip_clustering_cqat(qat_model)
    return CqatResult(model=stripped, history=history,
                      unique_values_before=weights.unique_values_report(clustered_model),
                      unique_values_after=weights.unique_values_report(stripped),
                      channel_unique_values_before=channel_unique_values(clustered_model),
                      channel_unique_values_after=channel_unique_values(stripped),
                      sparsity_before=weights.sparsity_report(clustered_model),
                      sparsity_after=weights.sparsity_report(stripped),
                      drift=kernel_drift(parent, weights.kernels(stripped)))


def pcqat(pruned_model: keras.Model, cluster_cfg: ClusterConfig, pcqat_cfg: PcqatConfig, train: training.Split,
          val: training.Split, *, batch_size: int, calibration: np.ndarray | None = None) -> PcqatResult:
    """Prune-cluster-preserving QAT: sparsity-preserving clustering, then sparsity-preserving CQAT.

    Args:
      pruned_model: a stripped pruned model; it is left unchanged.
      cluster_cfg: the cluster group for the clustering step (its learning_rate too; pcqat.cluster_epochs
        replaces cluster.epochs), with at least settings.MIN_CLUSTERS_PRESERVING_SPARSITY clusters.
      pcqat_cfg: the pcqat group: cluster_epochs, epochs and learning_rate of the QAT step.
      train, val: (images, integer labels) for fine-tuning.
      batch_size: fine-tuning batch size.
      calibration: images that set the ranges before the QAT step (`quantization.start_ranges`).

    Returns:
      PcqatResult with the parent's sparsity and both stages' results; .model is the final QAT model.
    """
    parent_sparsity = weights.sparsity_report(pruned_model)
    clustered = cluster(pruned_model, cluster_cfg, train, val, batch_size=batch_size, preserve_sparsity=True,
                        epochs=int(pcqat_cfg.cluster_epochs))
    quantized = cqat(clustered.model, pcqat_cfg, train, val, batch_size=batch_size, preserve_sparsity=True,
                     clustered=clustered_selection(pruned_model, cluster_cfg), calibration=calibration)
    return PcqatResult(parent_sparsity=parent_sparsity, cluster=clustered, cqat=quantized)
