"""Stage `train`: fit the float baseline that every compression stage starts from.

    dvc repro train          # reads params: seed, model, train

Outputs: models/baseline.keras; reports/train/metrics.json (test accuracy, loss, parameters) and
reports/train/history.csv (per-epoch curves, a DVC plot); one MLflow run with the curves.
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import data, models, training, tracking
from compresslab.config import load_params, section
from compresslab.errors import run_main
from compresslab.model_io import save_model
from compresslab.outputs import write_history, write_json
from compresslab.seeding import seed_everything

PREPARED = "data/prepared"
MODEL = "models/baseline.keras"
METRICS = "reports/train/metrics.json"
HISTORY = "reports/train/history.csv"


def validate_train_config(cfg) -> None:
    for key in ("epochs", "batch_size", "learning_rate"):
        training.check_positive(f"train.{key}", cfg[key])
    training.make_optimizer(cfg.optimizer, cfg.learning_rate)  # fails early on an unknown name


def run(params) -> dict:
    cfg = params.train
    validate_train_config(cfg)
    meta = data.load_meta(PREPARED)
    input_shape = (meta["image_size"], meta["image_size"], meta["channels"])
    model = models.build_model(params.model, input_shape, len(meta["class_names"]))
    seed_everything(params.seed)
    train, val, test = (data.load_split(PREPARED, name) for name in data.SPLITS)
    print(f"train: {params.model.name} ({models.count_parameters(model):,} parameters) on {len(train[1])} "
          f"images for up to {cfg.epochs} epochs")
    history = training.fit(model, train, val, epochs=cfg.epochs, batch_size=cfg.batch_size,
                           learning_rate=cfg.learning_rate, optimizer=cfg.optimizer, patience=cfg.patience)
    scores = training.evaluate(model, test)
    save_model(model, MODEL)
    metrics = {"test_accuracy": scores["accuracy"], "test_loss": scores["loss"], "epochs_run": len(history["loss"]),
               "parameters": models.count_parameters(model)}
    write_json(METRICS, metrics)
    write_history(HISTORY, history)
    tracking.log_run("train", params=section(params, "seed", "data", "model", "train"), metrics=metrics,
                     history=history, artifacts=[METRICS, HISTORY])
    return metrics


if __name__ == "__main__":
    run_main(lambda: run(load_params()))
