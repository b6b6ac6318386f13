"""Stage `train`: fit the float baseline that every compression stage starts from, until it has converged.

    dvc repro train          # reads params: seed, data, model, train

Training runs until validation loss stops improving (early stopping after `train.patience` epochs, best
weights restored; the learning rate halves after `train.reduce_lr_patience` epochs without improvement), at
most `train.epochs` epochs. A baseline stopped short of convergence would let every fine-tuning stage look
like it improves accuracy.
Outputs: models/baseline.keras; reports/train/metrics.json (test accuracy, loss, parameters, the epoch it
stopped at and the epoch kept) and reports/train/history.csv (per-epoch curves, a DVC plot); one MLflow run.
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import settings, variants
from compresslab.data import shards
from compresslab.models import zoo
from compresslab.models import training_stage
from compresslab.models import training
from compresslab.config import load_params
from compresslab.errors import run_main
from compresslab.models.seeding import seed_everything

MAKES = variants.made_by("train")   # its variant and parent, declared in compresslab/variants.py


def run(params) -> dict:
    seed, data, model_cfg, cfg = settings.read(params, "seed", "data", "model", "train")
    with training_stage.distributed(cfg.strategy) as strategy:  # before any TensorFlow work: see train.strategy
        meta = shards.load_meta()
        input_shape = (meta["image_size"], meta["image_size"], meta["channels"])
        seed_everything(seed)  # before building: the initial weights are drawn from the seeded state
        # The zoo's builders take their options as a mapping (tests and benchmarks build models without a
        # params.yaml); the options left unset keep each builder's default.
        model = zoo.build_model(model_cfg.model_dump(exclude_none=True), input_shape, len(meta["class_names"]),
                                task=meta.get("task", "classification"))
        train, val, test = training_stage.load_splits(data, model_cfg)
        print(f"train: {model_cfg.name} ({zoo.count_parameters(model):,} parameters) on {len(train)} "
              f"images for up to {cfg.epochs} epochs, {strategy.num_replicas_in_sync} replica(s) "
              f"({cfg.strategy} strategy)")
        history = training.fit(model, train, val, epochs=cfg.epochs, batch_size=cfg.batch_size,
                               learning_rate=cfg.learning_rate, optimizer=cfg.optimizer, patience=cfg.patience,
                               reduce_lr_patience=cfg.reduce_lr_patience)
        stopped = training.convergence(history, cfg.epochs)
        why = (f"val_loss did not improve for {cfg.patience} epochs" if stopped["stopped_early"]
               else "reached train.epochs: raise it if val_loss was still falling")
        print(f"train: stopped after epoch {stopped['epochs_run']} ({why}); kept epoch {stopped['best_epoch']}")
        measurements = {**stopped, "parameters": zoo.count_parameters(model)}
        return training_stage.finish(MAKES, params, ("seed", "data", "model", "train"), model, test, measurements,
                                     history, strategy_name=cfg.strategy)


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
