"""What every model-producing stage does around its technique: load the splits, then measure, save and log.

Each stage script validates its config, loads its parent model, calls its technique, and hands the result to
`finish`, so every variant is measured, saved and tracked the same way.
"""

from collections.abc import Mapping

import numpy as np

from compresslab import dataset, paths, training, tracking
from compresslab.config import section
from compresslab.model_io import load_model, save_model
from compresslab.outputs import write_history, write_json
from compresslab.seeding import seed_everything

Splits = tuple[training.Split, training.Split, training.Split]


def load_splits() -> Splits:
    """(train, val, test) as model input: float32 pixels in [0, 1], integer labels."""
    return tuple(dataset.load_split(name) for name in dataset.SPLITS)


def begin(params, parent: str):
    """The prologue of every fine-tuning stage, run after its config is validated.

    Args:
      params: the whole params.yaml.
      parent: the variant whose Keras model the stage starts from (e.g. 'baseline').

    Returns:
      (parent model, train, val, test), with every random source seeded from `params.seed` last, so the
      fine-tuning that follows repeats.
    """
    train, val, test = load_splits()
    model = load_model(paths.keras_model(parent))
    seed_everything(params.seed)
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


def finish(stage: str, params, groups: tuple[str, ...], model, variant: str, test: training.Split,
           measurements: Mapping, history: Mapping[str, list[float]]) -> dict:
    """Score the model on the test split, save it, write the stage's DVC metrics and plot, log to MLflow.

    Args:
      stage: the DVC stage name; outputs go to reports/<stage>/metrics.json and history.csv.
      params: the whole params.yaml; `groups` are the parts of it the stage read (logged as MLflow params).
      model: the trained Keras model, saved as the Keras file of `variant` (`paths.keras_model`).
      test: the test split.
      measurements: what the technique measured (sparsity, unique values, ...); numeric leaves are kept.
      history: per-epoch fine-tuning curves.

    Returns:
      The metrics written.
    """
    training.compile_model(model)
    scores = training.evaluate(model, test)
    model_path = paths.keras_model(variant)
    save_model(model, model_path)
    measured = numeric(measurements)
    # Per-layer figures go beside the DVC metrics, not into them: one column per layer would bury the
    # headline figures in `dvc exp show`.
    per_layer = {key: value for key, value in measured.items() if isinstance(value, Mapping)}
    metrics = {"test_accuracy": scores["accuracy"], "test_loss": scores["loss"],
               **{key: value for key, value in measured.items() if key not in per_layer}}
    folder = paths.stage_reports(stage)
    outputs = {"metrics": folder / "metrics.json", "history": folder / "history.csv", "layers": folder / "layers.json"}
    write_json(outputs["metrics"], metrics)
    # Epoch timings go to MLflow only: the DVC plot must repeat byte for byte, and time never does.
    write_history(outputs["history"], {key: values for key, values in history.items() if key != "epoch_seconds"})
    if per_layer:
        write_json(outputs["layers"], per_layer)
    print(f"{stage}: test accuracy {scores['accuracy']:.4f}; saved {model_path}")
    tracking.log_run(stage, params=section(params, *groups), metrics=flat_metrics({**metrics, **per_layer}),
                     history=history, artifacts=[path for path in outputs.values() if path.exists()])
    return {**metrics, **per_layer}
