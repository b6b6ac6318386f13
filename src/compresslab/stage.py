"""What every model-producing stage does around its technique: load the splits, then measure, save and log.

Each stage script validates its config, loads its parent model, calls its technique, and hands the result to
`finish`, so every variant is measured, saved and tracked the same way.
"""

from collections.abc import Mapping

import numpy as np

from compresslab import data, training, tracking
from compresslab.config import section
from compresslab.model_io import save_model
from compresslab.outputs import write_history, write_json

PREPARED = "data/prepared"

Splits = tuple[training.Split, training.Split, training.Split]


def load_splits() -> Splits:
    """(train, val, test) as model input: float32 pixels in [0, 1], integer labels."""
    return tuple(data.load_split(PREPARED, name) for name in data.SPLITS)


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


def finish(stage: str, params, groups: tuple[str, ...], model, model_path: str, test: training.Split,
           measurements: Mapping, history: Mapping[str, list[float]]) -> dict:
    """Score the model on the test split, save it, write the stage's DVC metrics and plot, log to MLflow.

    Args:
      stage: the DVC stage name; outputs go to reports/<stage>/metrics.json and history.csv.
      params: the whole params.yaml; `groups` are the parts of it the stage read (logged as MLflow params).
      model: the trained Keras model; model_path: where it is saved.
      test: the test split.
      measurements: what the technique measured (sparsity, unique values, ...); numeric leaves are kept.
      history: per-epoch fine-tuning curves.

    Returns:
      The metrics written.
    """
    training.compile_model(model)
    scores = training.evaluate(model, test)
    save_model(model, model_path)
    metrics = {"test_accuracy": scores["accuracy"], "test_loss": scores["loss"], **numeric(measurements)}
    metrics_path, history_path = f"reports/{stage}/metrics.json", f"reports/{stage}/history.csv"
    write_json(metrics_path, metrics)
    write_history(history_path, history)
    print(f"{stage}: test accuracy {scores['accuracy']:.4f}; saved {model_path}")
    tracking.log_run(stage, params=section(params, *groups), metrics=flat_metrics(metrics), history=history,
                     artifacts=[metrics_path, history_path])
    return metrics
