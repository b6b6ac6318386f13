"""Stage `cqat`: cluster-preserving QAT of the clustered model.

    dvc repro cqat           # reads params: seed, model (a detector's anchors), train.batch_size, cluster.layers,
                             # quantize.calibration_batches, cqat

Outputs: models/cqat.keras; reports/cqat/metrics.json (distinct values and sparsity after fine-tuning and their
drift from the clustered parent) and history.csv.
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import settings, variants
from compresslab.models import training_stage
from compresslab.techniques import clustering, quantization
from compresslab.config import load_params
from compresslab.errors import run_main

MAKES = variants.made_by("cqat")   # its variant and parent, declared in compresslab/variants.py


def run(params) -> dict:
    seed, data, model_cfg, train_cfg, cluster_cfg, quantize_cfg, cfg = settings.read(
        params, "seed", "data", "model", "train", "cluster", "quantize", "cqat")
    with training_stage.distributed(train_cfg.strategy):  # before any TensorFlow work: see train.strategy
        model, train, val, test = training_stage.begin(data, seed, MAKES.parent, model_cfg)
        result = clustering.cqat(model, cfg, train, val, batch_size=train_cfg.batch_size,
                                 clustered=clustering.clustered_selection(model, cluster_cfg),
                                 calibration=quantization.calibration_of(quantize_cfg, train, train_cfg.batch_size,
                                                                         seed))
        print(f"cqat: distinct values per layer {result.unique_values_before} -> {result.unique_values_after}")
        return training_stage.finish(MAKES, params, ("seed", "data", "model", "train", "cluster", "quantize", "cqat"),
                                     result.model, test, clustering_measurements(result), result.history,
                                     strategy_name=train_cfg.strategy)


def clustering_measurements(result: clustering.CqatResult) -> dict:
    return {"max_unique_values_before": max(result.channel_unique_values_before.values(), default=0),
            "max_unique_values": max(result.channel_unique_values_after.values(), default=0),
            "unique_values": result.unique_values_after, "sparsity_before": result.sparsity_before["overall"],
            "sparsity": result.sparsity_after["overall"], "drift": result.drift}


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
