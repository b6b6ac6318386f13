"""Stage `sensitivity` (analysis/dvc.yaml, not part of a plain `dvc repro`): each prunable layer of the baseline
pruned alone, and quantized alone to int8, and the validation accuracy (a detector's mAP) it costs.

    dvc repro analysis/dvc.yaml:sensitivity      # or `make sensitivity`; reads params: seed, train.batch_size,
                                                 # sensitivity
    dvc exp run -S experiment=auto_prune          # prune.layers: auto measures the same way inside `prune`

Outputs: reports/sensitivity/layers.json (one row per prunable layer, most sensitive first), layers.csv (the
`dvc plots show` bar chart) and layers.png; an MLflow run with the worst drops and the files.
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from dataclasses import asdict

from compresslab import paths, settings
from compresslab.models import training_stage
from compresslab.tracking import mlflow_log
from compresslab.config import load_params, section
from compresslab.errors import run_main
from compresslab.reporting import sensitivity_files as report
from compresslab.techniques import sensitivity


def run(params) -> dict:
    seed, data, model_cfg, train_cfg, cfg = settings.read(params, "seed", "data", "model", "train", "sensitivity")
    model, train, val, _ = training_stage.begin(data, seed, "baseline", model_cfg)
    result = asdict(sensitivity.measure(model, train, val, cfg, batch_size=train_cfg.batch_size, seed=seed,
                                        model_cfg=model_cfg))
    written = report.write_outputs(result, paths.stage_reports("sensitivity"))
    print(f"sensitivity: wrote {', '.join(map(str, written))}")
    mlflow_log.log_run("sensitivity", params=section(params, "seed", "model", "train", "sensitivity"),
                     metrics=report.headline_metrics(result), artifacts=written)
    return result


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
