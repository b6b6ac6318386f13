"""Scoring every detector file's test-split boxes by the COCO protocol, and comparing each file on the same test
images with baseline-float32 and with the float control of its mode.

mAP has no McNemar test: every mAP gets a 95 % bootstrap interval over test images, and every difference
against baseline-float32 and the control a paired bootstrap interval (both files scored on the same resampled
images). A difference whose interval covers 0 is noise, and is reported as `ns`.
"""

import re
from collections.abc import Mapping, Sequence

import numpy as np

from compresslab import variants
from compresslab.detection import coco_metrics, postprocess
from compresslab.reporting import metrics
from compresslab.results.record import label, thread_key

QUALITY_KEYS = ("map", "map50", "map75", "ar100")


def take_detections(rows: list[dict]) -> dict[str, list[postprocess.Detections]]:
    """Remove each row's `detections` (boxes per test image: no figure for a table) into {label: list}."""
    return {label(row): postprocess.from_json(row.pop("detections")) for row in rows if "detections" in row}


def class_key(name: str) -> str:
    """A class name as part of a figure's key (`ap50_<class>`): MLflow keys and CSV headers stay plain."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", str(name))


def score_rows(rows: list[dict], detections: Mapping[str, list], ground_truth: Sequence[np.ndarray],
               class_names: Sequence[str], image_size: int, *, score_threshold: float, samples: int,
               latency_threads: int, seed: int = 0) -> dict[str, dict]:
    """Add every quality and comparison figure to the rows (in place).

    Args:
      rows: one per file, from `tflite.measure.measure_file` (failed files carry `error`).
      detections: {label: boxes per test image}, from `take_detections`.
      ground_truth: the test split's boxes per image, in the same order.
      class_names, image_size: the data set's classes and the square side the boxes are fractions of.
      score_threshold: where precision and recall are counted (`evaluate.score_threshold`).
      samples: bootstrap resamples of the test images (`evaluate.bootstrap_samples`).
      latency_threads: the thread count whose latency ratio is the headline one.

    Returns:
      {label: the file's full COCO scores (per-class AP, PR curves)} for the report's tables and pictures.
    """
    names = list(class_names)
    scored: dict[str, dict] = {}
    baseline = variants.BASELINE_FILE if variants.BASELINE_FILE in detections else None
    controls = {row["mode"]: label(row) for row in rows
                if row["variant"] == variants.CONTROL and label(row) in detections}
    for row in rows:
        found = detections.get(label(row))
        if found is None:
            continue
        result = coco_metrics.score(ground_truth, found, names, image_size, score_threshold=score_threshold)
        scored[label(row)] = result
        low, high = coco_metrics.bootstrap_interval(ground_truth, found, names, image_size, samples=samples,
                                                    seed=seed)
        row.update({key: result[key] for key in QUALITY_KEYS})
        row.update(box_precision=result["precision"], box_recall=result["recall"], test_images=len(ground_truth),
                   test_objects=int(sum(len(boxes) for boxes in ground_truth)), map_ci_low=low, map_ci_high=high)
        row.update({f"ap50_{class_key(name)}": ap for name, ap in result["per_class_ap50"].items()})
        if baseline is not None:
            row.update(paired(ground_truth, found, detections[baseline], names, image_size, samples, seed, ""))
            baseline_row = next(r for r in rows if label(r) == baseline)
            row["gzip_ratio"] = metrics.ratios(row, baseline_row)["gzip_ratio"]
            if row.get(thread_key("ratio", latency_threads)) is not None:
                row["latency_ratio"] = row[thread_key("ratio", latency_threads)]
        control = controls.get(row["mode"])
        if control is not None:
            row.update(paired(ground_truth, found, detections[control], names, image_size, samples, seed,
                              "_control"))
    return scored


def paired(ground_truth, found, reference, class_names, image_size, samples, seed, suffix: str) -> dict:
    """mAP change in points against `reference` on the same images, with its paired bootstrap interval and
    verdict (`significant`: the interval excludes 0); keyed with `suffix` ('' baseline, '_control')."""
    test = coco_metrics.paired_bootstrap(ground_truth, found, reference, class_names, image_size, samples=samples,
                                         seed=seed)
    return {f"map_delta{suffix}_pp": test["delta"] * 100.0, f"map_delta{suffix}_ci_low_pp": test["low"] * 100.0,
            f"map_delta{suffix}_ci_high_pp": test["high"] * 100.0, f"significant{suffix}": bool(test["significant"])}


def uncertainty_notes(rows: Sequence[Mapping]) -> list[str]:
    """How far the mAPs can be trusted, and whether the float control gained over the baseline."""
    baseline = next((r for r in rows if label(r) == variants.BASELINE_FILE and r.get("map") is not None), None)
    if baseline is None:
        return ["baseline-float32 was not scored: no file can be compared with it."]
    half = (baseline["map_ci_high"] - baseline["map_ci_low"]) * 50
    notes = [f"Every mAP is measured on the same {baseline['test_images']} test images ({baseline['test_objects']} "
             f"objects); baseline-float32's 95 % bootstrap interval is ±{half:.2f} points. A change whose paired "
             f"bootstrap interval covers 0 is marked `ns`: read it as no change."]
    control = next((r for r in rows if label(r) == f"{variants.CONTROL}-float32" and r.get("map") is not None), None)
    if control is None:
        notes.append("No float control (finetune-float32) was scored: changes against the baseline mix "
                     "compression with extra training.")
    elif not control.get("significant"):
        notes.append(f"The float control changes mAP by {control['map_delta_pp']:+.2f} points, not significantly: "
                     f"the baseline has converged, and 'Δ ctrl' is what compression alone costs.")
    else:
        notes.append(f"The float control changes mAP by {control['map_delta_pp']:+.2f} points over the baseline, "
                     f"significantly: the baseline had not converged. Read 'Δ ctrl', or train longer "
                     f"(train.epochs, train.patience).")
    below = [label(r) for r in rows if r["mode"] == "int8" and r.get("significant_control")
             and (r.get("map_delta_control_pp") or 0) < 0]
    if below:
        notes.append(f"{', '.join(below)} lose mAP against the float control beyond chance. Which layers' int8 "
                     f"ranges account for that: `make sensitivity` measures each layer quantized alone on "
                     f"validation mAP and sets these drops beside it in reports/sensitivity/drops.md.")
    collapsed = [r for r in rows if r.get("map") is not None and r["mode"] == "int8"
                 and r["map"] < 0.5 * baseline["map"]]
    for row in collapsed:
        keras_map = row.get("keras_map")
        if keras_map is not None and keras_map < 0.5 * baseline["map"]:
            notes.append(f"{label(row)} collapsed: mAP {row['map']:.3f} against baseline-float32's "
                         f"{baseline['map']:.3f}, and its Keras model's mAP is {keras_map:.3f} too: the fine-tuning "
                         f"of {row['variant']} lost the detector, not its conversion. Look at its stage's training "
                         f"curves (reports/<stage>/history.csv) and try a lower learning rate or fewer layers.")
        else:
            notes.append(f"{label(row)} collapsed: mAP {row['map']:.3f} against baseline-float32's "
                         f"{baseline['map']:.3f} while its Keras model holds: full-integer quantization of a "
                         f"detector can lose its box and score ranges (TF Model Garden: RetinaNet-MobileNetV2 23.3 "
                         f"-> 0.04 mAP after int8 PTQ); compare the QAT files, which learn the ranges while "
                         f"training.")
    return notes
