"""Stage `convert@<variant>`: one Keras variant to TFLite, a float variant in each of convert.modes, a QAT one to int8.

    dvc repro convert@pruned                 # reads params: seed, model (a detector's anchors), convert
    python stages/convert.py pruned          # what DVC runs

One stage per variant (DVC `foreach`), so a knob re-converts only the variants downstream of it.
Outputs: models/tflite/<variant>/<variant>-<mode>.tflite and conversion.json beside them (bytes per file, the
converter's reason for every failed mode, and the Keras model's predictions on the test split, which
`evaluate` compares each file with: a conversion bug shows as low agreement, not as a mysterious accuracy drop).
A failed conversion names the variant, the mode and the reason; the stage then fails unless
convert.skip_failed is true.
"""

import dataclasses
import shutil
import sys

import numpy as np

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import paths, settings, variants
from compresslab.data import shards
from compresslab.data import tfdata
from compresslab.config import load_params
from compresslab.errors import UserError, run_main
from compresslab.models.saving import load_model
from compresslab.outputs import write_bytes, write_json
from compresslab.tflite import converter


def validate_variant(variant: str) -> None:
    if variant not in variants.VARIANTS:
        raise UserError(f"unknown variant {variant!r}: use one of {', '.join(variants.VARIANTS)}")


def run(params, variant: str) -> dict:
    validate_variant(variant)
    seed, model_cfg, cfg = settings.read(params, "seed", "model", "convert")
    splits = shards.open_splits()
    if "mixed" in cfg.modes and splits["test"].task == "detection":
        raise UserError("convert.modes has mixed, which allocates bits by classification accuracy: leave it out "
                        "for a detector")
    representative = converter.calibration_samples(splits["train"], cfg.calibration_samples, seed)
    model = load_model(paths.keras_model(variant))
    # Start from an empty folder: a file left from an earlier mode list must not be evaluated as current.
    folder = paths.tflite_dir(variant)
    shutil.rmtree(folder, ignore_errors=True)
    sizes, failures = {}, {}
    modes = [mode for mode in variants.modes_of(variant, cfg.modes)
             if mode != "mixed" or cfg.mixed.variants is None or variant in cfg.mixed.variants]
    allocations = {}
    with converter.exported_model(model) as exported:  # saved once, converted in every mode
        for number, mode in enumerate(modes, 1):
            label = variants.label(variant, mode)
            try:
                if mode == "mixed":
                    flatbuffer, allocations[mode] = mixed_file(model, cfg.mixed, splits["val"], exported)
                else:
                    flatbuffer = converter.convert(model, mode, representative=representative, int8_io=cfg.int8_io,
                                                   qat=variants.is_qat(variant), exported=exported,
                                                   sparse_weights=cfg.sparse_weights)
            except converter.ConversionError as err:
                failures[mode] = str(err)
                print(f"convert [{number}/{len(modes)}] {label}: FAILED: {err}")
                continue
            write_bytes(paths.tflite_file(variant, mode), flatbuffer)
            sizes[mode] = len(flatbuffer)
            print(f"convert [{number}/{len(modes)}] {label}: {len(flatbuffer):,} bytes")
    record = {"variant": variant, "modes": modes, "bytes": sizes, "failures": failures, **allocations,
              **keras_reference(model, splits["test"], model_cfg)}
    write_json(paths.conversion_record(variant), record)
    if failures and not cfg.skip_failed:
        mode, reason = next(iter(failures.items()))
        raise UserError(f"{len(failures)} conversion(s) of {variant} failed, first {mode}: {reason} "
                        f"(set convert.skip_failed=true to keep the others)")
    return record


def mixed_file(model, mixed_cfg, val, exported) -> tuple[bytes, dict]:
    """Mode `mixed`: a precision per layer of the float32 file, the least validation loss within the target."""
    from compresslab.tflite import allocation  # noqa: PLC0415  (only this mode needs it)

    target = allocation.Target(bytes=mixed_cfg.bytes, ratio=mixed_cfg.ratio)
    images, labels = val.take(range(shards.count(val))), val.labels()
    mixed, record = allocation.allocate(converter.convert(model, "float32", exported=exported),
                                        mixed_cfg.precisions, target, images, labels)
    held = "met" if record["meets_target"] else "MISSED"
    print(f"mixed: {record['gzip_bytes']:,} B gzipped against a target of {record['target_gzip_bytes']:,} B ({held}; "
          f"the per-layer sums said {record['predicted_gzip_bytes']:,} B), validation loss "
          f"{record['val_loss_pp']:+.2f} pp (the sums said {record['predicted_val_loss_pp']:+.2f} pp): "
          + ", ".join(f"{layer['scope'].split(';')[0]} {layer['precision']}" for layer in record["layers"]))
    return mixed, record


def keras_reference(model, test, model_cfg) -> dict:
    """What the Keras model does on the test split, which `evaluate` compares each file with: a classifier's
    predicted classes; a detector's anchors and NMS settings (evaluate decodes the files with them, without
    TensorFlow, as the Keras model was decoded here) and its own COCO mAP."""
    if test.task != "detection":
        keras_predictions = np.argmax(model.predict(tfdata.pipeline(test, 256), verbose=0), axis=1)
        return {"keras_predictions": keras_predictions.tolist()}
    from compresslab.detection import keras_model  # noqa: PLC0415  (detection only)

    spec = keras_model.anchors_of(model_cfg, test.meta["image_size"])
    decoder = keras_model.decoder_of(model_cfg, test.meta["image_size"], anchors=spec)
    scored = keras_model.keras_scores(model, test, decoder)
    return {"task": "detection", "anchors": dataclasses.asdict(spec), "decoding": decoder.settings(),
            "keras_map": scored["map"], "keras_map50": scored["map50"]}


def main() -> None:
    if len(sys.argv) != 2:
        raise UserError(f"usage: python stages/convert.py VARIANT (one of {', '.join(variants.VARIANTS)})")
    run(load_params(), sys.argv[1])


if __name__ == "__main__":
    run_main(main, skip_teardown=True)
