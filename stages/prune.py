"""Stage `prune`: magnitude pruning of the baseline while fine-tuning, wrappers stripped before saving.

    dvc repro prune          # reads params: seed, train.batch_size, prune
    dvc exp run -S prune.final_sparsity=0.8      # re-runs prune, pqat, pcqat and what follows

Outputs: models/pruned.keras; reports/prune/metrics.json (sparsity asked for and measured, per layer and
overall; test accuracy) and reports/prune/history.csv.
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import stage
from compresslab.techniques import pruning
from compresslab.config import load_params
from compresslab.errors import run_main


def run(params) -> dict:
    cfg = params.prune
    pruning.validate_prune_config(cfg)
    model, train, val, test = stage.begin(params, "baseline")
    result = pruning.prune(model, cfg, train, val, batch_size=params.train.batch_size)
    measurements = {"target_sparsity": result.target_sparsity, "sparsity": result.sparsity["overall"],
                    "layer_sparsity": result.sparsity["layers"], "pruned_layers": len(result.pruned_layers),
                    "skipped_layers": len(result.skipped_layers)}
    return stage.finish("prune", params, ("seed", "train", "prune"), result.model, "pruned", test,
                        measurements, result.history)


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
