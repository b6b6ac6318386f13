"""Stage `quantize`: quantization-aware training of the baseline on the selected layers (TFMOT default 8-bit).

    dvc repro quantize       # reads params: seed, train.batch_size, quantize
    dvc exp run -S quantize.layers=dense         # dense-only QAT; never re-runs prune

Outputs: models/qat.keras (QAT wrappers kept: `convert` turns it into an int8 file);
reports/quantize/metrics.json and history.csv.
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import stage
from compresslab.techniques import quantization
from compresslab.config import load_params
from compresslab.errors import run_main


def run(params) -> dict:
    cfg = params.quantize
    quantization.validate_qat_config(cfg, "quantize")
    with stage.distributed(params):  # before any TensorFlow work: see train.strategy
        model, train, val, test = stage.begin(params, "baseline")
        result = quantization.quantize_aware(model, cfg, train, val, batch_size=params.train.batch_size)
        return stage.finish("quantize", params, ("seed", "train", "quantize"), result.model, "qat", test,
                            {"quantized_layers": len(result.quantized_layers)}, result.history)


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
