"""Stage `convert`: every Keras variant to TFLite, float variants in each of convert.modes, QAT ones to int8.

    dvc repro convert        # reads params: seed, convert

Outputs: models/tflite/<variant>-<mode>.tflite, reports/convert/metrics.json (bytes per file, failure count)
and reports/convert/failures.json (the reasons, which evaluate reports).
A conversion that fails names the variant, the mode and the converter's reason; the stage then fails unless
convert.skip_failed is true.
"""

import shutil

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import data, stage, tflite, variants
from compresslab.config import load_params
from compresslab.errors import UserError, run_main
from compresslab.model_io import load_model
from compresslab.outputs import write_json

METRICS = "reports/convert/metrics.json"
FAILURES = "reports/convert/failures.json"


def validate_convert_config(cfg) -> None:
    unknown = [mode for mode in cfg.modes if mode not in tflite.MODES]
    if unknown or not cfg.modes:
        raise UserError(f"convert.modes={list(cfg.modes)} must be a non-empty list of {', '.join(tflite.MODES)}")
    if not isinstance(cfg.calibration_samples, int) or cfg.calibration_samples < 1:
        raise UserError(f"convert.calibration_samples must be a positive integer, got {cfg.calibration_samples!r}")


def run(params) -> dict:
    cfg = params.convert
    validate_convert_config(cfg)
    x_train, _ = data.load_split(stage.PREPARED, "train")
    representative = tflite.calibration_samples(x_train, cfg.calibration_samples, params.seed)
    # Start from an empty folder: a file left from an earlier mode list must not be evaluated as current.
    shutil.rmtree(variants.TFLITE_DIR, ignore_errors=True)
    variants.TFLITE_DIR.mkdir(parents=True)
    sizes, failures, loaded = {}, {}, {}
    plan = variants.conversions(list(cfg.modes))
    for number, (variant, model_path, mode, qat) in enumerate(plan, 1):
        label = f"{variant}-{mode}"
        if model_path not in loaded:  # a float variant converts in every mode: load it once
            loaded[model_path] = load_model(model_path)
        model = loaded[model_path]
        try:
            flatbuffer = tflite.convert(model, mode, representative=representative, int8_io=cfg.int8_io, qat=qat)
        except tflite.ConversionError as err:
            failures[label] = str(err)
            print(f"convert [{number}/{len(plan)}] {label}: FAILED: {err}")
            continue
        tflite.write_atomically(flatbuffer, variants.tflite_path(variant, mode))
        sizes[label] = len(flatbuffer)
        print(f"convert [{number}/{len(plan)}] {label}: {len(flatbuffer):,} bytes")
    write_json(METRICS, {"bytes": sizes, "failed": len(failures)})
    write_json(FAILURES, failures)
    if failures and not cfg.skip_failed:
        first = next(iter(failures))
        raise UserError(f"{len(failures)} conversion(s) failed, first {first}: {failures[first]} "
                        f"(set convert.skip_failed=true to keep the others)")
    return sizes


if __name__ == "__main__":
    run_main(lambda: run(load_params()))
