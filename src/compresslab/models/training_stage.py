"""What every model-producing stage does around its technique: open the splits and the tf.distribute
strategy, then measure, save and log.

Each stage script reads its typed config (`settings.read`), enters `distributed`, loads its parent model
(`begin`), calls its technique, and hands the result to `finish`, so every variant is measured, saved and
tracked the same way.
"""

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from compresslab import paths
from compresslab.variants import Variant
from compresslab.data import shards
from compresslab.models import distribute
from compresslab.models import training
from compresslab.tracking import mlflow_log
from compresslab.config import section
from compresslab.models.saving import load_model, save_model
from compresslab.outputs import write_history, write_json
from compresslab.models.seeding import seed_everything
from compresslab.settings import DataConfig, ModelConfig

Splits = tuple[shards.StoredSplit, shards.StoredSplit, shards.StoredSplit]


def load_splits(data: DataConfig, model: ModelConfig | None = None) -> Splits:
    """(train, val, test), streamed from the checked shards; the train split is shuffled in a buffer of
    `data.shuffle_buffer` images and augmented as `data.augment` says. Detection splits carry the training
    targets of `model`'s anchors, so every fit and evaluation below reads boxes the model can learn from."""
    splits = shards.open_splits()
    targets = None
    if splits["train"].task == "detection":
        if model is None:
            raise TypeError("a detection split needs the model config for its anchors")
        from compresslab.detection import keras_model  # noqa: PLC0415  (detection only)

        spec = keras_model.anchors_of(model, splits["train"].meta["image_size"])
        match_iou = model.anchors.match_iou if model.anchors is not None else 0.5
        targets = keras_model.training_targets(spec, len(splits["train"].meta["class_names"]), match_iou)
    train = dataclasses.replace(splits["train"], shuffle_buffer=data.shuffle_buffer, augment=data.augment,
                                targets=targets)
    return train, dataclasses.replace(splits["val"], targets=targets), dataclasses.replace(splits["test"],
                                                                                           targets=targets)


@contextlib.contextmanager
def distributed(strategy_name: str) -> Iterator[object]:
    """Run the block under the `train.strategy` strategy's scope: models built, loaded, wrapped (pruning, QAT,
    clustering) and compiled in it are replicated. Enter it before any other TensorFlow work."""
    strategy = distribute.make_strategy(strategy_name)
    with strategy.scope():
        yield strategy


def begin(data: DataConfig, seed: int, parent: str, model_cfg: ModelConfig | None = None):
    """The prologue of every fine-tuning stage, run after its config is read.

    Args:
      data: the data group (how the train split is shuffled and augmented).
      seed: params.yaml's `seed`.
      parent: the variant whose Keras model the stage starts from (e.g. 'baseline').
      model_cfg: the model group (a detector's anchors; unused for a classifier).

    Returns:
      (parent model, train, val, test), with every random source seeded from `seed` last, so the
      fine-tuning that follows repeats.
    """
    train, val, test = load_splits(data, model_cfg)
    model = load_model(paths.keras_model(parent))
    seed_everything(seed)
    return model, train, val, test


def numeric(tree: Mapping) -> dict:
    """The numeric leaves of a nested dict (DVC and MLflow metrics are numbers; names go to the log)."""
    kept = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            inner = numeric(value)
            if inner:
                kept[key] = inner
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            kept[key] = float(value) if isinstance(value, (float, np.floating)) else int(value)
    return kept


def flat_metrics(tree: Mapping, prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flat_metrics(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def finish(made: Variant, params, groups: tuple[str, ...], model, test: training.Split,
           measurements: Mapping, history: Mapping[str, list[float]], *, strategy_name: str,
           tags: Mapping[str, str] | None = None) -> dict:
    """Score the model on the test split, save it, write the stage's DVC metrics and plot, log to MLflow.

    Args:
      made: the variant the stage makes (`variants.made_by`); outputs go to reports/<its stage>/metrics.json
        and history.csv, the model to its Keras file (`paths.keras_model`).
      params: the whole params.yaml; `groups` are the parts of it the stage read (logged as MLflow params).
      model: the trained Keras model.
      test: the test split.
      measurements: what the technique measured (sparsity, unique values, ...); numeric leaves are kept.
      history: per-epoch fine-tuning curves.
      strategy_name: `train.strategy`, recorded with the devices that trained.
      tags: more MLflow tags of the run (train: its starting weights and phases).

    Returns:
      The metrics written.
    """
    import tensorflow as tf  # noqa: PLC0415  (already loaded by the stage; the strategy whose scope we are in)

    stage, variant = made.stage, made.name

    strategy = tf.distribute.get_strategy()
    training.compile_model(model)
    scores = training.evaluate(model, test)
    quality = keras_quality(model, test, params, scores)
    if not distribute.is_chief(strategy):
        # Every worker saves (Keras' multi-worker contract); only the chief's model and reports are kept.
        with tempfile.TemporaryDirectory(prefix="compresslab-worker-") as folder:
            save_model(model, Path(folder) / paths.keras_model(variant).name)
        print(f"{stage}: worker {distribute.describe(strategy_name, strategy).get('task')} finished "
              f"({describe_quality(quality)}); the chief writes the model and reports")
        return {**quality, "test_loss": scores["loss"]}
    model_path = paths.keras_model(variant)
    save_model(model, model_path)
    measured = numeric(measurements)
    # Per-layer figures go beside the DVC metrics, not into them: one column per layer would bury the
    # headline figures in `dvc exp show`.
    per_layer = {key: value for key, value in measured.items() if isinstance(value, Mapping)}
    metrics = {**quality, "test_loss": scores["loss"],
               **{key: value for key, value in measured.items() if key not in per_layer}}
    folder = paths.stage_reports(stage)
    outputs = {"metrics": folder / "metrics.json", "history": folder / "history.csv", "layers": folder / "layers.json"}
    write_json(outputs["metrics"], metrics)
    # Epoch timings go to MLflow only: the DVC plot must repeat byte for byte, and time never does.
    write_history(outputs["history"], {key: values for key, values in history.items() if key != "epoch_seconds"})
    if per_layer:
        write_json(outputs["layers"], per_layer)
    print(f"{stage}: {describe_quality(quality)}; saved {model_path}")
    training_setup = distribute.describe(strategy_name, strategy)
    mlflow_log.log_run(stage, params=section(params, *groups), metrics=flat_metrics({**metrics, **per_layer}),
                     history=history, artifacts=[path for path in outputs.values() if path.exists()],
                     tags={**{f"distribute.{key}": ", ".join(value) if isinstance(value, list) else str(value)
                              for key, value in training_setup.items()}, **(tags or {})})
    return {**metrics, **per_layer}


def keras_quality(model, test: training.Split, params, scores: Mapping) -> dict[str, float]:
    """The Keras model's primary figure on the test split: accuracy, or a detector's COCO mAP and mAP@0.5."""
    if not training.is_detector(model):
        return {"test_accuracy": scores["accuracy"]}
    from compresslab.detection import keras_model  # noqa: PLC0415  (detection only)
    from compresslab import settings  # noqa: PLC0415

    (model_cfg,) = settings.read(params, "model")
    scored = keras_model.keras_scores(model, test, keras_model.decoder_of(model_cfg, test.meta["image_size"]))
    return {"test_map": scored["map"], "test_map50": scored["map50"]}


def describe_quality(quality: Mapping) -> str:
    if "test_map" in quality:
        return f"test mAP {quality['test_map']:.4f} (mAP@0.5 {quality['test_map50']:.4f})"
    return f"test accuracy {quality['test_accuracy']:.4f}"
