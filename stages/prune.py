"""Stage `prune`: magnitude pruning of the baseline while fine-tuning, wrappers stripped before saving.

    dvc repro prune          # reads params: seed, model (a detector's anchors), train.batch_size, prune
    dvc exp run -S prune.final_sparsity=0.8      # re-runs prune, pqat, pcqat and what follows
    dvc exp run -S experiment=auto_prune         # prune.layers: auto, only the layers that cost little

Outputs: models/pruned.keras; reports/prune/metrics.json (sparsity asked for and measured, per layer and
overall; test accuracy) and reports/prune/history.csv. With `prune.layers: auto`, reports/prune/layers.json
also holds each layer's measured drop (auto_drop_pp) and whether it was chosen (auto_chosen, 1 or 0).
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import settings, variants
from compresslab.models import training_stage
from compresslab.techniques import pruning, sensitivity
from compresslab.config import load_params
from compresslab.errors import run_main
from compresslab.models.seeding import seed_everything

MAKES = variants.made_by("prune")   # its variant and parent, declared in compresslab/variants.py


def run(params) -> dict:
    seed, data, model_cfg, train_cfg, cfg = settings.read(params, "seed", "data", "model", "train", "prune")
    with training_stage.distributed(train_cfg.strategy):  # before any TensorFlow work: see train.strategy
        model, train, val, test = training_stage.begin(data, seed, MAKES.parent, model_cfg)
        auto = {}
        if cfg.layers == settings.AUTO_LAYERS:
            choice = sensitivity.choose_layers_to_prune(model, train, val, cfg, batch_size=train_cfg.batch_size,
                                                        seed=seed, model_cfg=model_cfg)
            cfg = cfg.model_copy(update={"layers": choice.chosen})
            auto = {"auto_drop_pp": {row.layer: row.pruned_drop_pp for row in choice.rows},
                    "auto_chosen": {row.layer: int(row.layer in choice.chosen) for row in choice.rows}}
            seed_everything(seed)  # the fine-tune starts from the same random state as with the layers listed
        result = pruning.prune(model, cfg, train, val, batch_size=train_cfg.batch_size)
        measurements = {"target_sparsity": result.target_sparsity, "sparsity": result.sparsity["overall"],
                        "layer_sparsity": result.sparsity["layers"], "pruned_layers": len(result.pruned_layers),
                        "skipped_layers": len(result.skipped_layers), **auto}
        return training_stage.finish(MAKES, params, ("seed", "data", "model", "train", "prune"), result.model, test,
                                     measurements, result.history, strategy_name=train_cfg.strategy)


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
