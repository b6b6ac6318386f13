"""Stage `finetune`: the float control. The baseline fine-tuned with the compression stages' budget and nothing else.

    dvc repro finetune       # reads params: seed, model (a detector's anchors), train.batch_size, finetune

Every compression stage fine-tunes the baseline. Without a control, what that extra training does is read as
an effect of compression. `finetune` gets the same epochs, learning rate, batch size and seed as pruning (by
default its keys interpolate `prune.epochs` and `prune.learning_rate`), and no compression; it is converted and
evaluated like every other variant, and the report gives each file's change against it ("vs control").
Outputs: models/finetune.keras; reports/finetune/metrics.json and history.csv.
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import settings, variants
from compresslab.models import training_stage
from compresslab.models import training
from compresslab.config import load_params
from compresslab.errors import run_main

MAKES = variants.made_by("finetune")   # its variant and parent, declared in compresslab/variants.py


def run(params) -> dict:
    seed, data, model_cfg, train_cfg, cfg = settings.read(params, "seed", "data", "model", "train", "finetune")
    with training_stage.distributed(train_cfg.strategy):  # before any TensorFlow work: see train.strategy
        model, train, val, test = training_stage.begin(data, seed, MAKES.parent, model_cfg)
        history = training.fit(model, train, val, epochs=cfg.epochs, batch_size=train_cfg.batch_size,
                               learning_rate=cfg.learning_rate)
        return training_stage.finish(MAKES, params, ("seed", "data", "model", "train", "finetune"), model, test, {},
                                     history, strategy_name=train_cfg.strategy)


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
