"""Stage `pqat`: pruning-preserving QAT of the pruned model, measuring how far its zeros drift.

    dvc repro pqat           # reads params: seed, model (a detector's anchors), train.batch_size,
                             # quantize.calibration_batches, pqat

Outputs: models/pqat.keras; reports/pqat/metrics.json (sparsity before and after, drift) and history.csv.
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import settings, variants
from compresslab.models import training_stage
from compresslab.techniques import quantization
from compresslab.config import load_params
from compresslab.errors import run_main

MAKES = variants.made_by("pqat")   # its variant and parent, declared in compresslab/variants.py


def run(params) -> dict:
    seed, data, model_cfg, train_cfg, quantize_cfg, cfg = settings.read(params, "seed", "data", "model", "train",
                                                                        "quantize", "pqat")
    with training_stage.distributed(train_cfg.strategy):  # before any TensorFlow work: see train.strategy
        model, train, val, test = training_stage.begin(data, seed, MAKES.parent, model_cfg)
        result = quantization.pqat(model, cfg, train, val, batch_size=train_cfg.batch_size,
                                   calibration=quantization.calibration_of(quantize_cfg, train,
                                                                           train_cfg.batch_size, seed))
        measurements = {"sparsity_before": result.sparsity_before["overall"],
                        "sparsity": result.sparsity_after["overall"], "sparsity_drift": result.drift["overall"],
                        "layer_sparsity": result.sparsity_after["layers"], "layer_drift": result.drift["layers"]}
        return training_stage.finish(MAKES, params, ("seed", "data", "model", "train", "quantize", "pqat"),
                                     result.model, test, measurements, result.history,
                                     strategy_name=train_cfg.strategy)


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
