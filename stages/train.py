"""Stage `train`: fit the float baseline that every compression stage starts from, until it has converged.

    dvc repro train          # reads params: seed, data, model, train

Training runs until validation loss stops improving (early stopping after `train.patience` epochs, best
weights restored; the learning rate halves after `train.reduce_lr_patience` epochs without improvement), at
most `train.epochs` epochs. A baseline stopped short of convergence would let every fine-tuning stage look
like it improves accuracy.
`model.weights` starts from a pretrained file instead of random weights (models/pretrained.py), and
`train.freeze_backbone_epochs` first trains the classifier alone on that frozen backbone (models/transfer.py).
Outputs: models/baseline.keras; reports/train/metrics.json (test accuracy, loss, parameters, the epoch it
stopped at and the epoch kept; trainable parameters and epochs per phase when frozen first) and
reports/train/history.csv (per-epoch curves, a DVC plot); one MLflow run, tagged with its phases.
"""

import functools

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import settings, variants
from compresslab.data import shards
from compresslab.models import pretrained, transfer, zoo
from compresslab.models import training_stage
from compresslab.models import training
from compresslab.config import load_params
from compresslab.errors import UserError, run_main
from compresslab.models.seeding import seed_everything

MAKES = variants.made_by("train")   # its variant and parent, declared in compresslab/variants.py


def run(params) -> dict:
    seed, data, model_cfg, cfg = settings.read(params, "seed", "data", "model", "train")
    with training_stage.distributed(cfg.strategy) as strategy:  # before any TensorFlow work: see train.strategy
        meta = shards.load_meta()
        input_shape = (meta["image_size"], meta["image_size"], meta["channels"])
        task = meta.get("task", "classification")
        if model_cfg.weights is not None and task != "classification":
            raise UserError(f"model.weights={model_cfg.weights!r}: starting from a weights file is for classifiers "
                            f"so far; set model.weights=null for a detector")
        weights_file = pretrained.locate(model_cfg, meta["image_size"])   # before any work: a missing file
        seed_everything(seed)  # before building: the initial weights are drawn from the seeded state
        # The zoo's builders take their options as a mapping (tests and benchmarks build models without a
        # params.yaml); the options left unset keep each builder's default.
        model = zoo.build_model(model_cfg.model_dump(exclude_none=True), input_shape, len(meta["class_names"]),
                                task=task)
        tags = {"weights": model_cfg.weights or "random"}
        if weights_file is not None:
            kept = pretrained.load_into(model, weights_file, model_cfg.weights)
            print(f"train: weights from {weights_file}" + (f"; {', '.join(kept)} keep their initial weights "
                                                            f"(not in the file, or sized for other classes)"
                                                            if kept else ""))
        train, val, test = training_stage.load_splits(data, model_cfg)
        print(f"train: {model_cfg.name} ({zoo.count_parameters(model):,} parameters) on {len(train)} "
              f"images for up to {cfg.epochs} epochs, {strategy.num_replicas_in_sync} replica(s) "
              f"({cfg.strategy} strategy)")
        fit = functools.partial(training.fit, train=train, val=val, batch_size=cfg.batch_size,
                                optimizer=cfg.optimizer, patience=cfg.patience,
                                reduce_lr_patience=cfg.reduce_lr_patience)
        phases = {}
        if cfg.freeze_backbone_epochs:
            print(f"train: the classifier alone on the frozen backbone for {cfg.freeze_backbone_epochs} epochs, "
                  f"then everything at learning rate {cfg.unfrozen_learning_rate:g}")
            history, phases = transfer.fit_in_phases(
                model, fit, frozen_epochs=cfg.freeze_backbone_epochs, epochs=cfg.epochs,
                learning_rate=cfg.learning_rate, fine_tune_learning_rate=cfg.unfrozen_learning_rate)
            tags["phases"] = ", ".join(f"{phase} ({figures['trainable_parameters']:,} trainable, "
                                       f"{figures['epochs_run']} epochs)" for phase, figures in phases.items())
        else:
            history = fit(model, epochs=cfg.epochs, learning_rate=cfg.learning_rate)
        stopped = training.convergence(history, cfg.epochs)
        why = (f"val_loss did not improve for {cfg.patience} epochs" if stopped["stopped_early"]
               else "reached train.epochs: raise it if val_loss was still falling")
        print(f"train: stopped after epoch {stopped['epochs_run']} ({why}); kept epoch {stopped['best_epoch']}")
        measurements = {**stopped, "parameters": zoo.count_parameters(model),
                        **{f"{phase}.{key}": value for phase, figures in phases.items()
                           for key, value in figures.items()}}
        return training_stage.finish(MAKES, params, ("seed", "data", "model", "train"), model, test, measurements,
                                     history, strategy_name=cfg.strategy, tags=tags)


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
