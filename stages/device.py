"""Stage `device@<variant>`: time every .tflite file of one variant on each board of evaluate.devices, over SSH.

    dvc repro device@pruned                  # reads params: evaluate.devices and evaluate's schedule
    python stages/device.py pruned           # what DVC runs

Its own stage, after `convert@<variant>` and beside `evaluate@<variant>`: a board that is off fails this stage
only, never the evaluation on this machine, and DVC re-times only the variants whose files changed. With no
devices configured it writes an empty record at once. The measurement is evaluate's own (tflite/timing_core.py,
copied to the board), against baseline-float32 timed on the same board.
Output: reports/devices/<variant>.json, per device: its fingerprint (CPU, cores, vector extensions, versions),
and a row per file (latency median and IQR, FPS per thread count, ratio to baseline-float32, peak memory).
Nothing is written unless every device succeeded; a failure is one line naming the device and the fix.
"""

import json
import sys

import compresslab  # noqa: F401  (prepares the environment)
from compresslab import paths, settings, variants
from compresslab.config import load_params
from compresslab.data import shards
from compresslab.devices.timing import time_variant
from compresslab.errors import UserError, run_main
from compresslab.outputs import write_json


def run(params, variant: str) -> dict:
    if variant not in variants.VARIANTS:
        raise UserError(f"unknown variant {variant!r}: use one of {', '.join(variants.VARIANTS)}")
    (cfg,) = settings.read(params, "evaluate")
    result = {"variant": variant, "devices": {}}
    if cfg.devices:
        record_path = paths.conversion_record(variant)
        if not record_path.is_file():
            raise UserError(f"{record_path} not found: run `dvc repro convert@{variant}` first")
        record = json.loads(record_path.read_text())
        modes = [mode for mode in record["modes"] if mode not in record["failures"]]
        reference = paths.tflite_file(*variants.split_label(variants.BASELINE_FILE))
        if not reference.is_file():
            raise UserError(f"{reference} not found: every file is timed against it; run `dvc repro "
                            f"convert@{variants.BASELINE}` first")
        sample = next(shards.image_batches(shards.open_splits()["test"], 1))
        result["devices"] = time_variant(cfg, variant, modes, reference, sample)
    else:
        print(f"device@{variant}: evaluate.devices is empty: nothing to time")
    write_json(paths.device_timing(variant), result)
    return result


def main() -> None:
    if len(sys.argv) != 2:
        raise UserError(f"usage: python stages/device.py VARIANT (one of {', '.join(variants.VARIANTS)})")
    run(load_params(), sys.argv[1])


if __name__ == "__main__":
    run_main(main, skip_teardown=True)
