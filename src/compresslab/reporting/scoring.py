"""Scoring every file's test-split predictions, and comparing each file on the same test images with the float32
baseline and with the float control of its mode.

For every file: accuracy with its 95 % Wilson interval and the number of test images; precision, recall, F1
and the confusion matrix; an exact McNemar test against baseline-float32 and against the control (paired: the
same images, only the images where the two disagree count); top-1 agreement with baseline-float32; size and
latency ratios. A difference whose McNemar test is not significant at 0.05 is noise, and is reported so.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from compresslab import variants
from compresslab.reporting import metrics, statistics
from compresslab.results.record import label, thread_key

QUALITY_KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "positive_class",
                "positive_precision", "positive_recall", "positive_f1")
ALPHA = 0.05
WIDE_INTERVAL_PP = 1.0  # a half-width above this hides the effects a compression study looks for


def take_predictions(rows: list[dict]) -> dict[str, np.ndarray]:
    """Remove each row's `y_pred` (one class per test image: no figure for a table) into {label: array}."""
    return {label(row): np.asarray(row.pop("y_pred")) for row in rows if "y_pred" in row}


def score_rows(rows: list[dict], predictions: Mapping[str, np.ndarray], y_true: np.ndarray,
               class_names: Sequence[str], positive_class: str | None, latency_threads: int) -> dict[str, dict]:
    """Add every quality and comparison figure to the rows (in place).

    Args:
      rows: one per file, from `tflite.measure.measure_file` (failed files carry `error`).
      predictions: {label: predicted class per test image}, from `take_predictions`.
      y_true: the test labels the predictions were made on.
      class_names, positive_class: as for `metrics.quality`.
      latency_threads: the thread count whose median latency the latency ratio compares.

    Returns:
      {label: {'class_names', 'matrix'}}: the confusion matrix of every scored file.
    """
    baseline = next((r for r in rows if label(r) == variants.BASELINE_FILE and label(r) in predictions), None)
    controls = {r["mode"]: r for r in rows if r["variant"] == variants.CONTROL and label(r) in predictions}
    confusions = {}
    for row in rows:
        y_pred = predictions.get(label(row))
        if y_pred is None:
            continue
        quality = metrics.quality(y_true, y_pred, list(class_names), positive_class)
        row.update({key: quality.get(key) for key in QUALITY_KEYS})
        confusions[label(row)] = {"class_names": list(class_names), "matrix": quality["confusion"]}
        correct = int(np.sum(y_pred == y_true))
        low, high = statistics.accuracy_interval(correct, len(y_true))
        row.update(test_images=len(y_true), accuracy_ci_low=low, accuracy_ci_high=high)
        if baseline is not None:
            row.update(paired(y_true, y_pred, predictions[label(baseline)], "baseline"))
            row["baseline_agreement"] = statistics.agreement(y_pred, predictions[label(baseline)])
            row.update(metrics.ratios(row, baseline, latency_key=thread_key("median_ms", latency_threads)))
            # Timed against baseline-float32 in alternating rounds by evaluate: holds across runs and machines,
            # where a ratio of two medians timed at different moments does not.
            if row.get(thread_key("ratio", latency_threads)) is not None:
                row["latency_ratio"] = row[thread_key("ratio", latency_threads)]
        control = controls.get(row["mode"])
        if control is not None:
            row.update(paired(y_true, y_pred, predictions[label(control)], "control"))
    return confusions


def paired(y_true: np.ndarray, y_pred: np.ndarray, reference: np.ndarray, name: str) -> dict:
    """Accuracy change in points against `reference` on the same images, its exact McNemar p-value and
    verdict, keyed `accuracy_delta_pp` / `p_value` / `significant` for the baseline, with `_control` for
    the control."""
    test = statistics.mcnemar_exact(y_true, y_pred, reference, alpha=ALPHA)
    suffix = "" if name == "baseline" else f"_{name}"
    delta = (np.mean(y_pred == y_true) - np.mean(reference == y_true)) * 100.0
    return {f"accuracy_delta{suffix}_pp": float(delta), f"p_value{suffix}": test["p_value"],
            f"significant{suffix}": bool(test["significant"])}


def uncertainty_notes(rows: Sequence[Mapping]) -> list[str]:
    """What a reader must know before comparing accuracies: how wide the intervals are, and whether the
    float control gained over the baseline (which would mean the baseline had not converged)."""
    notes = []
    baseline = next((r for r in rows if label(r) == variants.BASELINE_FILE and "test_images" in r), None)
    if baseline is None:
        return ["baseline-float32 was not scored: no file can be compared with it."]
    n = baseline["test_images"]
    half = (baseline["accuracy_ci_high"] - baseline["accuracy_ci_low"]) * 50
    notes.append(f"Every accuracy is measured on the same {n} test images (one image = {100 / n:.2f} pp); "
                 f"baseline-float32's 95 % interval is ±{half:.2f} pp. Differences marked `ns` are not "
                 f"significant (exact McNemar test on the same images, p ≥ {ALPHA}): read them as no change.")
    if half > WIDE_INTERVAL_PP:
        notes.append(f"The test split is small: a 95 % interval of ±{half:.2f} pp (over {WIDE_INTERVAL_PP:g} pp) "
                     f"hides the effects a compression study looks for. Raise data.test_fraction or add images.")
    control = next((r for r in rows if label(r) == f"{variants.CONTROL}-float32" and "test_images" in r), None)
    if control is None:
        notes.append("No float control (finetune-float32) was scored: changes against the baseline mix "
                     "compression with extra training.")
    elif abs(control["accuracy_delta_pp"]) < half and not control["significant"]:
        notes.append(f"The float control (the baseline fine-tuned with the compression budget, no compression) "
                     f"changes accuracy by {control['accuracy_delta_pp']:+.2f} pp, within the interval's "
                     f"half-width (p = {control['p_value']:.2f}): the baseline has converged, and "
                     f"'Δ ctrl' is what compression alone costs.")
    else:
        notes.append(f"The float control changes accuracy by {control['accuracy_delta_pp']:+.2f} pp over the "
                     f"baseline (p = {control['p_value']:.3g}), more than the interval's half-width: the baseline "
                     f"had not converged, and changes against it mix compression with extra training. Read "
                     f"'Δ ctrl' (against the control of the same mode), or train the baseline longer "
                     f"(train.epochs, train.patience).")
    return notes


def latency_notes(rows: Sequence[Mapping], threads: int) -> list[str]:
    """Why int8 files are not much faster than float32 (when they are not): the operators XNNPACK leaves to
    LiteRT's reference kernels, read from each file's execution plan (LiteRT 2.3.0's Python API has no
    per-operator profiler); and which file is fastest instead."""
    key = thread_key("ratio", threads)
    slow = [row for row in rows if row.get("mode") == "int8" and (row.get(key) or 0) > 0.5
            and row.get("operators_outside_xnnpack")]
    if not slow:
        return []
    ratios = [row[key] for row in slow]
    outside = sorted({row["operators_outside_xnnpack"] for row in slow})
    partitions = sorted({row["xnnpack_partitions"] for row in slow})
    fastest = min((row for row in rows if row.get(key) is not None), key=lambda row: row[key])
    return [f"{len(slow)} int8 file(s) run at {min(ratios):.2f}-{max(ratios):.2f}x baseline-float32's latency at "
            f"{threads} thread(s), not the ~0.5x int8 can reach: XNNPACK leaves {' / '.join(outside)} to LiteRT's "
            f"reference kernels, splitting them into {'/'.join(map(str, partitions))} partitions where "
            f"baseline-float32 runs as one, and every hand-over costs time (with several threads, a wake-up of "
            f"the workers). The fastest file here is {label(fastest)} at {fastest[key]:.2f}x."]

