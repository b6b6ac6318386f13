"""Stage `train`: fit the float baseline that every compression stage starts from.

    dvc repro train          # reads params: seed, model, train

Outputs: models/baseline.keras; reports/train/metrics.json (test accuracy, loss, parameters) and
reports/train/history.csv (per-epoch curves, a DVC plot); one MLflow run with the curves.
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import data, models, stage, training
from compresslab.config import load_params
from compresslab.errors import run_main
from compresslab.seeding import seed_everything


def validate_train_config(cfg) -> None:
    for key in ("epochs", "batch_size", "learning_rate"):
        training.check_positive(f"train.{key}", cfg[key])
    training.make_optimizer(cfg.optimizer, cfg.learning_rate)  # fails early on an unknown name


def run(params) -> dict:
    cfg = params.train
    validate_train_config(cfg)
    meta = data.load_meta(stage.PREPARED)
    input_shape = (meta["image_size"], meta["image_size"], meta["channels"])
    seed_everything(params.seed)  # before building: the initial weights are drawn from the seeded state
    model = models.build_model(params.model, input_shape, len(meta["class_names"]))
    train, val, test = stage.load_splits()
    print(f"train: {params.model.name} ({models.count_parameters(model):,} parameters) on {len(train[1])} "
          f"images for up to {cfg.epochs} epochs")
    history = training.fit(model, train, val, epochs=cfg.epochs, batch_size=cfg.batch_size,
                           learning_rate=cfg.learning_rate, optimizer=cfg.optimizer, patience=cfg.patience)
    measurements = {"epochs_run": len(history["loss"]), "parameters": models.count_parameters(model)}
    return stage.finish("train", params, ("seed", "data", "model", "train"), model, "models/baseline.keras",
                        test, measurements, history)


if __name__ == "__main__":
    run_main(lambda: run(load_params()))
