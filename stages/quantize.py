"""Stage `quantize`: quantization-aware training of the baseline on the selected layers (TFMOT default 8-bit).

    dvc repro quantize       # reads params: seed, model (a detector's anchors), train.batch_size, quantize
    dvc exp run -S quantize.layers=dense         # dense-only QAT; never re-runs prune

Outputs: models/qat.keras (QAT wrappers kept: `convert` turns it into an int8 file);
reports/quantize/metrics.json and history.csv.
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import settings, variants
from compresslab.models import training_stage
from compresslab.techniques import quantization
from compresslab.config import load_params
from compresslab.errors import run_main

MAKES = variants.made_by("quantize")   # its variant and parent, declared in compresslab/variants.py


def run(params) -> dict:
    seed, data, model_cfg, train_cfg, cfg = settings.read(params, "seed", "data", "model", "train", "quantize")
    with training_stage.distributed(train_cfg.strategy):  # before any TensorFlow work: see train.strategy
        model, train, val, test = training_stage.begin(data, seed, MAKES.parent, model_cfg)
        calibration = quantization.calibration_of(cfg, train, train_cfg.batch_size, seed)
        result = quantization.quantize_aware(model, cfg, train, val, batch_size=train_cfg.batch_size,
                                             calibration=calibration)
        return training_stage.finish(MAKES, params, ("seed", "data", "model", "train", "quantize"), result.model, test,
                                     {"quantized_layers": len(result.quantized_layers)}, result.history,
                                     strategy_name=train_cfg.strategy)


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
