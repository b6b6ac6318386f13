"""Stage `evaluate@<variant>`: run every .tflite file of one variant with the LiteRT interpreter on the test split.

    dvc repro evaluate@pruned                # reads params: evaluate
    python stages/evaluate.py pruned         # what DVC runs

One stage per variant (DVC `foreach`), so a knob re-times only the files downstream of it. It imports LiteRT
and NumPy only, never TensorFlow, and starts in a fraction of a second.
Output: reports/evaluate/<variant>.json, one row per file: its predictions on the test split, its validation
accuracy (what `compresslab search` chooses on, so the test split stays held out), agreement with its Keras
model, file and gzipped size, sparsity and MACs read back from the file, latency (median and
interquartile range) and FPS per thread count, its latency ratio to baseline-float32 timed in alternating
rounds in this process, peak memory; each file's per-operator profile (`profiles`: time per operator and per
operator type, and the share of it inside XNNPACK, see tflite/profile.py); and the machine's fingerprint (CPU,
vector extensions, versions).
A file that cannot be run, or a mode that failed to convert, becomes a row with its `error`; the `report`
stage scores, compares and reports all of them.
"""

import json
import os
import sys

import compresslab  # noqa: F401  (prepares the environment)
from compresslab import paths, settings, variants
from compresslab.data import shards
from compresslab.config import load_params
from compresslab.errors import UserError, run_main
from compresslab.tflite.timing_core import machine_fingerprint
from compresslab.outputs import write_json
from compresslab.tflite import measure, profile, tensor_error


def tensor_errors(variant: str, rows: list[dict], test) -> dict:
    """Each quantized file's per-tensor error against its float32 twin (none for a QAT variant: it has no
    float32 file), on the test split's first images; only files that were evaluated (a broken one is an error
    row already)."""
    measured = {row["mode"] for row in rows if not row.get("error")}
    if "float32" not in measured:
        return {}
    reference = paths.tflite_file(variant, "float32")
    images = test.take(range(min(tensor_error.SAMPLES, shards.count(test))))
    return {variants.label(variant, mode): tensor_error.compare(reference, paths.tflite_file(variant, mode), images)
            for mode in sorted(measured - {"float32"}, key=variants.MODES.index)}


def run(params, variant: str) -> dict:
    if variant not in variants.VARIANTS:
        raise UserError(f"unknown variant {variant!r}: use one of {', '.join(variants.VARIANTS)}")
    (cfg,) = settings.read(params, "evaluate")
    threads = cfg.threads
    cores = len(os.sched_getaffinity(0))
    if max(threads) > cores:
        print(f"evaluate: evaluate.threads={threads} asks for more threads than the {cores} core(s) this process "
              "may use: timings at that count measure the threads queueing, not a speed-up")
    splits = shards.open_splits()
    measure.check_positive_class(cfg, splits["test"].meta["class_names"])
    record_path = paths.conversion_record(variant)
    if not record_path.is_file():
        raise UserError(f"{record_path} not found: run `dvc repro convert@{variant}` first")
    record = json.loads(record_path.read_text())
    validation = splits["val"]   # for choices (compresslab search): the test split stays held out
    decoding = measure.Decoding.from_record(record, splits["test"].meta)
    rows = [measure.error_row(variant, mode, f"conversion failed: {reason}")
            for mode, reason in record["failures"].items()]
    profiles = {}
    converted = [mode for mode in record["modes"] if mode not in record["failures"]]
    # Every file is timed against baseline-float32 in the same process, so its latency ratio holds across runs.
    reference = paths.tflite_file(*variants.split_label(variants.BASELINE_FILE))
    for number, mode in enumerate(converted, 1):
        path = paths.tflite_file(variant, mode)
        try:
            row = measure.measure_file(path, splits["test"], cfg.model_dump(), record.get("keras_predictions"),
                                       reference if reference.is_file() else None, validation, decoding)
        except UserError as err:
            rows.append(measure.error_row(variant, mode, str(err)))
            print(f"evaluate [{number}/{len(converted)}] {path.name}: FAILED: {err}")
            continue
        if decoding is not None:
            row["keras_map"] = record["keras_map"]   # beside the file's own mAP: a conversion bug shows as a gap
        if cfg.profile_seconds > 0:
            profiles[path.stem] = profile.try_profile(path, threads[0], next(shards.image_batches(splits["test"], 1)),
                                                      cfg.profile_seconds)
            row["time_in_xnnpack_share"] = profiles[path.stem].get("delegated_share")
        rows.append(row)
        ratio = row.get(f"latency_ratio_t{threads[0]}")
        quality = (f"agrees with Keras on {row['keras_agreement']:.2%}" if decoding is None else
                   f"validation mAP {row.get('val_map', float('nan')):.4f} (Keras model's test mAP "
                   f"{record['keras_map']:.4f})")
        print(f"evaluate [{number}/{len(converted)}] {path.name}: {quality}, "
              f"gzip {row['gzip_bytes']:,} B, sparsity {row['sparsity']:.3f}, "
              f"{row[f'latency_median_ms_t{threads[0]}']:.3f} ms at {threads[0]} thread(s)"
              + (f" ({ratio:.2f}x baseline-float32)" if ratio is not None else ""))
    result = {"variant": variant, "fingerprint": machine_fingerprint(), "rows": rows, "profiles": profiles,
              "tensor_errors": tensor_errors(variant, rows, splits["test"])}
    if "mixed" in record:   # the per-layer allocation behind the mixed file, for the report
        result["allocations"] = {variants.label(variant, "mixed"): record["mixed"]}
    write_json(paths.evaluation(variant), result)
    return result


def main() -> None:
    if len(sys.argv) != 2:
        raise UserError(f"usage: python stages/evaluate.py VARIANT (one of {', '.join(variants.VARIANTS)})")
    run(load_params(), sys.argv[1])


if __name__ == "__main__":
    run_main(main, skip_teardown=True)
