"""Magnitude pruning with TFMOT: wrap the chosen layers, fine-tune while the schedule zeroes weights, strip.

    dvc exp run -S prune.final_sparsity=0.8 -S prune.layers=dense

How TFMOT 0.8.1 counts steps, which the schedule below is built around: `UpdatePruningStep` sets each
wrapper's step to 0 when training starts and every training batch first adds 1, then updates the masks if
the schedule says so. The batches of a fine-tune of N steps therefore see steps 1..N (never 0), and masks
change only at steps s with begin_step <= s <= end_step and (s - begin_step) % frequency == 0. A polynomial
schedule reaches final_sparsity only at s == end_step, so end_step must be such a step and must be <= N.
"""

import math
from dataclasses import dataclass

import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

from compresslab.data import shards
from compresslab.models import training
from compresslab.errors import UserError
from compresslab.models.saving import copy_model
from compresslab.settings import XNNPACK_LAYERS, PruneConfig
from compresslab.techniques import weights
from compresslab.techniques.layers import select_layers

# A derived end_step stops changing the masks this share of the fine-tune before its end, so the surviving
# weights get some steps to recover at the final sparsity before the model is saved.
RECOVERY_SHARE = 0.1
# TFMOT's m-by-n mask rearranges kernels of rank 2 (Dense) or 4 (Conv2D family) only.
M_BY_N_RANKS = (2, 4)


@dataclass
class PruneResult:
    """What `prune` returns.

    Attributes:
      model: the fine-tuned model with the pruning wrappers stripped (plain layers, zeros in the kernels).
      history: per-epoch training history from `training.fit`.
      pruned_layers: names of the layers that were wrapped and pruned, in model order.
      skipped_layers: {layer name: why TFMOT cannot prune it} for selected layers left as they were.
      target_sparsity: the sparsity asked for (final_sparsity, target_sparsity, or m/n for m_by_n).
      sparsity: `weights.sparsity_report` over the pruned layers: {'layers': {...}, 'overall': ..., 'weights': n}.
    """
    model: keras.Model
    history: dict[str, list[float]]
    pruned_layers: list[str]
    skipped_layers: dict[str, str]
    target_sparsity: float
    sparsity: dict


def schedule_steps(cfg: PruneConfig, steps_per_epoch: int) -> tuple[int, int, int]:
    """The (begin_step, end_step, frequency) the schedule will use for a fine-tune of epochs * steps_per_epoch.

    Unset begin_step is 0. Unset end_step is the fine-tuning length minus RECOVERY_SHARE of it. An end_step
    past the last step is refused for the polynomial schedule (its final sparsity would never be reached) and
    clipped for the constant one. Then frequency is capped at end - begin (a larger one never updates a mask)
    and end_step is moved down onto the last mask update, begin + k * frequency, so the final update happens
    at end_step, where the polynomial schedule gives exactly final_sparsity.
    """
    total = int(cfg.epochs) * int(steps_per_epoch)
    begin = 0 if cfg.begin_step is None else int(cfg.begin_step)
    if begin >= total:
        raise UserError(f"prune.begin_step={begin} is at or past the last fine-tuning step ({total} = "
                        f"{cfg.epochs} epochs x {steps_per_epoch} steps): lower it or raise prune.epochs")
    end = cfg.end_step
    if end is None:
        end = max(begin + 1, math.floor(total * (1 - RECOVERY_SHARE)))
    elif end > total:
        if cfg.schedule == "polynomial":
            raise UserError(f"prune.end_step={end} is past the last fine-tuning step ({total} = {cfg.epochs} "
                            f"epochs x {steps_per_epoch} steps), so final_sparsity would never be reached: "
                            f"lower it, raise prune.epochs, or leave it null")
        end = total
    span = end - begin
    frequency = min(int(cfg.frequency), span)
    return begin, begin + frequency * (span // frequency), frequency


def build_schedule(cfg: PruneConfig, steps_per_epoch: int) -> tfmot.sparsity.keras.PruningSchedule:
    """A TFMOT PolynomialDecay or ConstantSparsity schedule for the config.

    Args:
      cfg: the prune group.
      steps_per_epoch: training batches per epoch of the fine-tune.

    Returns:
      The schedule, with steps from `schedule_steps`. With m_by_n set TFMOT ignores it (the m-by-n mask
      is computed once, at step 1), but the wrapper still needs one.
    """
    begin, end, frequency = schedule_steps(cfg, steps_per_epoch)
    if cfg.schedule == "polynomial":
        return tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=float(cfg.initial_sparsity or 0.0), final_sparsity=float(cfg.final_sparsity),
            begin_step=begin, end_step=end, frequency=frequency)
    return tfmot.sparsity.keras.ConstantSparsity(
        target_sparsity=float(cfg.target_sparsity), begin_step=begin, end_step=end, frequency=frequency)


def prunable_weights(layer: keras.layers.Layer) -> list | None:
    """The weights TFMOT's prune_low_magnitude would prune in `layer`; None when TFMOT cannot wrap it at all."""
    if isinstance(layer, tfmot.sparsity.keras.PrunableLayer) or hasattr(layer, "get_prunable_weights"):
        return layer.get_prunable_weights()
    if PruneRegistry.supports(layer):
        # The registry's weight list is private API; it is the only place that says which weights
        # TFMOT 0.8.1 prunes (e.g. none for DepthwiseConv2D, only the pointwise kernel for SeparableConv2D).
        return [getattr(layer, name) for name in PruneRegistry._weight_names(layer)]
    return None


def unprunable_reason(layer: keras.layers.Layer, m_by_n: tuple[int, int] | None) -> str | None:
    """Why TFMOT cannot prune `layer` (with this m_by_n), or None when it can."""
    prunable = prunable_weights(layer)
    if prunable is None:
        return f"TFMOT has no pruning support for {type(layer).__name__}"
    if not prunable:
        return f"TFMOT prunes no weights of a {type(layer).__name__}"
    if m_by_n is not None:
        ranks = sorted({len(w.shape) for w in prunable} - set(M_BY_N_RANKS))
        if ranks:
            return f"m_by_n pruning needs rank-2 or rank-4 kernels, {type(layer).__name__} has rank {ranks[0]}"
        # TFMOT groups the weights of each input channel run into blocks of N and pads a partial last block
        # with zeros, which then count as its pruned weights: the block keeps every real weight (a 3-channel
        # first convolution under 2:4 comes out a third sparse, a 1-channel one not at all).
        inputs = sorted({int(w.shape[-2]) for w in prunable if int(w.shape[-2]) % m_by_n[1]})
        if inputs:
            return (f"m_by_n={m_by_n[0]}:{m_by_n[1]} needs a multiple of {m_by_n[1]} input channels, "
                    f"{type(layer).__name__} has {inputs[0]} (its last block would stay whole)")
    return None


def xnnpack_layers(model: keras.Model) -> list[str]:
    """The layers TFMOT's PruneForLatencyOnXNNPack policy prunes (the 1x1 convolutions), once the policy has
    checked that the model has the shape XNNPACK's sparse inference needs: a 3x3 stride-2 first convolution
    over 3 channels after ZeroPadding2D(1), only layers XNNPACK runs sparse, global average pooling at the end.
    Raises a UserError with the policy's reason otherwise."""
    policy = tfmot.sparsity.keras.PruneForLatencyOnXNNPack()
    try:
        policy.ensure_model_supports_pruning(model)
    except ValueError as err:
        raise UserError(f"prune.layers=xnnpack: model {model.name!r} cannot use XNNPACK's sparse inference "
                        f"({' '.join(str(err).split())}): use model=mobilenetv2, built for it, or another "
                        f"prune.layers") from None
    return [layer.name for layer in model.layers if policy.allow_pruning(layer)]


def wrap_for_pruning(model: keras.Model, layer_names, schedule, m_by_n) -> keras.Model:
    """A new model whose `layer_names` layers are wrapped in prune_low_magnitude; `model` is left as is."""
    wanted = set(layer_names)

    def wrap(layer):
        if layer.name not in wanted:
            return layer
        return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule,
                                                        sparsity_m_by_n=m_by_n)

    return keras.models.clone_model(copy_model(model), clone_function=wrap)


def prune(model: keras.Model, cfg: PruneConfig, train: training.Split, val: training.Split, *,
          batch_size: int) -> PruneResult:
    """Prune the selected layers of `model` by magnitude while fine-tuning, then strip the wrappers.

    Args:
      model: a trained flat Keras model; it is not modified.
      cfg: the prune group (`layers` picks the layers; `auto` must have been resolved to names by then).
      train, val: (images, integer labels) for the fine-tune.
      batch_size: the fine-tuning batch size (epochs and learning_rate come from cfg).

    Returns:
      A PruneResult; its sparsity is measured in the stripped kernels, not taken from the schedule.
    """
    names = (xnnpack_layers(model) if cfg.layers == XNNPACK_LAYERS
             else select_layers(model, cfg.layers, "prune.layers"))
    m_by_n = cfg.m_by_n
    steps_per_epoch = math.ceil(shards.count(train) / int(batch_size))
    schedule = build_schedule(cfg, steps_per_epoch)
    skipped = {name: reason for name in names
               if (reason := unprunable_reason(model.get_layer(name), m_by_n)) is not None}
    pruned = [name for name in names if name not in skipped]
    for name, reason in skipped.items():
        print(f"prune: skipping {name}: {reason}")
    if not pruned:
        raise UserError(f"prune.layers={cfg.layers!r} selects no layer TFMOT can prune "
                        f"({'; '.join(f'{n}: {r}' for n, r in skipped.items())}): select dense or conv layers")
    if m_by_n:
        target = m_by_n[0] / m_by_n[1]
        print(f"prune: {m_by_n[0]}:{m_by_n[1]} structured pruning of {', '.join(pruned)} "
              f"(masks fixed at the first step; the sparsity schedule is not used)")
    else:
        target = cfg.schedule_end
        config = schedule.get_config()["config"]
        print(f"prune: {cfg.schedule} schedule to {target:.0%} sparsity on {', '.join(pruned)}; masks updated "
              f"every {config['frequency']} steps from step {config['begin_step']} to {config['end_step']} "
              f"of {int(cfg.epochs) * steps_per_epoch}")
    wrapped = wrap_for_pruning(model, pruned, schedule, m_by_n)
    # No early stopping: restoring the "best" weights could bring back weights from before the final masks.
    history = training.fit(wrapped, train, val, epochs=cfg.epochs, batch_size=batch_size,
                           learning_rate=cfg.learning_rate,
                           callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    report = weights.sparsity_report(stripped, pruned)
    print(f"prune: measured sparsity {report['overall']:.3f} (target {target:.3f}) over {report['weights']} weights")
    return PruneResult(model=stripped, history=history, pruned_layers=pruned, skipped_layers=skipped,
                       target_sparsity=target, sparsity=report)
