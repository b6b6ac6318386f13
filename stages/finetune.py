"""Stage `finetune`: the float control. The baseline fine-tuned with the compression stages' budget and nothing else.

    dvc repro finetune       # reads params: seed, train.batch_size, finetune

Every compression stage fine-tunes the baseline. Without a control, what that extra training does is read as
an effect of compression. `finetune` gets the same epochs, learning rate, batch size and seed as pruning (by
default its keys interpolate `prune.epochs` and `prune.learning_rate`), and no compression; it is converted and
evaluated like every other variant, and the report gives each file's change against it ("vs control").
Outputs: models/finetune.keras; reports/finetune/metrics.json and history.csv.
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import stage, training
from compresslab.config import load_params
from compresslab.errors import run_main


def run(params) -> dict:
    cfg = params.finetune
    training.check_budget("finetune", cfg)
    with stage.distributed(params):  # before any TensorFlow work: see train.strategy
        model, train, val, test = stage.begin(params, "baseline")
        history = training.fit(model, train, val, epochs=cfg.epochs, batch_size=params.train.batch_size,
                               learning_rate=cfg.learning_rate)
        return stage.finish("finetune", params, ("seed", "train", "finetune"), model, "finetune", test, {}, history)


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
