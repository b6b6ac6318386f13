"""Stage `pcqat`: sparsity-preserving clustering of the pruned model, then cluster- and sparsity-preserving QAT.

    dvc repro pcqat          # reads params: seed, model (a detector's anchors), train.batch_size, cluster,
                             # quantize.calibration_batches, pcqat

Outputs: models/pcqat.keras; reports/pcqat/metrics.json (sparsity of the pruned parent and after each step,
distinct values per layer) and history.csv (clustering then QAT epochs).
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import settings, variants
from compresslab.models import training_stage
from compresslab.techniques import clustering, quantization
from compresslab.config import load_params
from compresslab.errors import run_main

MAKES = variants.made_by("pcqat")   # its variant and parent, declared in compresslab/variants.py


def run(params) -> dict:
    seed, data, model_cfg, train_cfg, cluster_cfg, quantize_cfg, cfg = settings.read(
        params, "seed", "data", "model", "train", "cluster", "quantize", "pcqat")
    with training_stage.distributed(train_cfg.strategy):  # before any TensorFlow work: see train.strategy
        model, train, val, test = training_stage.begin(data, seed, MAKES.parent, model_cfg)
        result = clustering.pcqat(model, cluster_cfg, cfg, train, val, batch_size=train_cfg.batch_size,
                                  calibration=quantization.calibration_of(quantize_cfg, train,
                                                                          train_cfg.batch_size, seed))
        measurements = {"parent_sparsity": result.parent_sparsity["overall"],
                        "clustered_sparsity": result.cluster.sparsity["overall"],
                        "sparsity": result.cqat.sparsity_after["overall"],
                        "sparsity_drift": result.cqat.sparsity_after["overall"] - result.parent_sparsity["overall"],
                        "requested_clusters": result.cluster.requested_clusters,
                        "max_unique_values": max(result.cqat.channel_unique_values_after.values(), default=0),
                        "unique_values": result.cqat.unique_values_after,
                        **result.cluster.plan_measurements()}
        for note in result.cluster.notes("pcqat"):
            print(note)
        history = {key: result.cluster.history.get(key, []) + values for key, values in result.cqat.history.items()}
        print(f"pcqat: sparsity {result.parent_sparsity['overall']:.4f} (pruned) -> "
              f"{result.cqat.sparsity_after['overall']:.4f}")
        return training_stage.finish(MAKES, params, ("seed", "data", "model", "train", "cluster", "quantize", "pcqat"),
                                     result.model, test, measurements, history, strategy_name=train_cfg.strategy)


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
