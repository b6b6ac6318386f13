"""Measuring one .tflite file with LiteRT: its predictions on the test split, what the file stores, its speed
and memory. NumPy and LiteRT only (no TensorFlow, no scikit-learn), so `evaluate@<variant>` starts in a fraction
of a second; scoring the predictions and comparing files is `reporting`'s job.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compresslab import variants
from compresslab.data import shards
from compresslab.detection import postprocess
from compresslab.errors import UserError
from compresslab.settings import EvaluateConfig
from compresslab.tflite import flatbuffer, runtime, sparse
from compresslab.tflite import timing


def check_positive_class(cfg: EvaluateConfig, class_names: Sequence[str]) -> None:
    """The class whose precision and recall are reported must be one of the data set's classes."""
    positive = cfg.positive_class
    if positive is not None and positive not in class_names:
        raise UserError(f"evaluate.positive_class={positive!r} is not one of the classes {list(class_names)}: "
                        f"name a folder of data/raw, or null")


@dataclass(frozen=True)
class Decoding:
    """How a detector file's raw outputs become boxes (the decoder `convert` recorded) and what they are scored
    against."""
    decoder: postprocess.Decoder
    class_names: tuple[str, ...]
    image_size: int

    @classmethod
    def from_record(cls, record: Mapping, meta: Mapping) -> "Decoding | None":
        """How a detector's files become boxes: the anchors and NMS settings `convert` recorded (its
        conversion.json), with which it decoded the Keras model too. None for a classifier."""
        if record.get("task") != "detection":
            return None
        from compresslab.detection.anchors import AnchorSpec  # noqa: PLC0415  (detection only; NumPy)

        spec = AnchorSpec(**{key: tuple(tuple(v) if isinstance(v, list) else v for v in value)
                             if isinstance(value, list) else value for key, value in record["anchors"].items()})
        return cls(postprocess.Decoder(spec.boxes(), **record["decoding"]), class_names=tuple(meta["class_names"]),
                   image_size=int(meta["image_size"]))

    def detect(self, interpreter, images) -> list:
        """The boxes the file finds on every image of `images` (a split or an array), a batch at a time."""
        return self.decoder.detect_batches(lambda batch: runtime.predict_detector(interpreter, batch),
                                           shards.image_batches(images))

    def map(self, interpreter, split) -> float:
        """The file's COCO mAP@[.5:.95] on a stored detection split."""
        from compresslab.detection import coco_metrics  # noqa: PLC0415  (detection only)

        return coco_metrics.score(split.ground_truth(), self.detect(interpreter, split), list(self.class_names),
                                  self.image_size)["map"]


def measure_file(path: Path, x_test, cfg: Mapping,
                 keras_predictions: Sequence[int] | None = None, reference: Path | None = None,
                 validation=None, decoding: Decoding | None = None) -> dict:
    """Every interpreter-measured figure of one .tflite file; raises UserError when the file is unusable.

    Args:
      path: models/tflite/<variant>/<variant>-<mode>.tflite.
      x_test: the test images: a `shards.StoredSplit` (read in batches), or model-input floats in memory.
      cfg: the `evaluate` group (threads, warmup_runs, min_runs, min_seconds, ratio_rounds, measure_memory).
      keras_predictions: the predicted classes of the Keras model the file was converted from.
      reference: baseline-float32's file, timed against this one in alternating rounds (None: no ratio).
      validation: the validation split (a StoredSplit, or images and labels): the file's val_accuracy, which
        choices made from these figures (`compresslab search`) use so that the test split stays held out.
      decoding: for a detector file, how its outputs become boxes: the row then holds `detections` (per test
        image, see detection/postprocess.py) instead of `y_pred`, and `val_map` instead of `val_accuracy`.

    Returns:
      A row: variant, mode, file, y_pred (predicted class per test image), keras_agreement (share of test
      images where the file predicts what its Keras model predicts), file_bytes, gzip_bytes, parameters,
      nonzero_parameters, sparsity, macs, xnnpack_partitions, xnnpack_operator_share and
      operators_outside_xnnpack (e.g. 'AVERAGE_POOL_2D x3, SOFTMAX'), sparse_inference ('eligible' or
      'no: why', see `sparse`); per thread count n:
      latency_{median,p25,p75,p90,mean,std}_ms_t{n}, fps_t{n} and latency_ratio{,_p25,_p75}_t{n} (against
      `reference`, interleaved); peak_rss_mb and model_rss_mb; val_accuracy when `validation` is given.
    """
    variant, mode = variants.split_label(path.stem)
    interpreter = runtime.load_interpreter(path)
    runtime.check_input_shape(interpreter, shards.image_shape(x_test))
    delegated = runtime.delegation(interpreter)
    stats = flatbuffer.weight_stats(path)
    # The test outputs lead the row and the validation figure follows the file's other figures: that order is
    # variants.csv's column order.
    outputs, validation_figure = (predictions(interpreter, x_test, keras_predictions, validation)
                                  if decoding is None else detections(interpreter, x_test, validation, decoding))
    row = {"variant": variant, "mode": mode, "file": str(path), **outputs,
           "file_bytes": path.stat().st_size, "gzip_bytes": flatbuffer.gzip_size(path),
           "parameters": stats["parameters"], "nonzero_parameters": stats["nonzero"],
           "sparsity": stats["sparsity"], "macs": stats["macs"],
           "xnnpack_partitions": delegated["partitions"],
           "xnnpack_operator_share": delegated["delegated"] / max(delegated["operators"], 1),
           "operators_outside_xnnpack": counted(delegated["outside"]),
           "sparse_inference": sparse.sparse_inference(path), **validation_figure}
    sample = next(shards.image_batches(x_test, 1))
    timings = timing.latency_by_threads(path, list(cfg["threads"]), warmup=cfg["warmup_runs"],
                                           min_runs=cfg["min_runs"], min_seconds=cfg["min_seconds"],
                                           input_sample=sample)
    for threads, measured in timings.items():
        for key in ("median_ms", "p25_ms", "p75_ms", "p90_ms", "mean_ms", "std_ms"):
            row[f"latency_{key}_t{threads}"] = measured[key]
        row[f"fps_t{threads}"] = measured["fps"]
        if reference is not None:
            ratio = ({"ratio": 1.0, "ratio_p25": 1.0, "ratio_p75": 1.0} if reference.resolve() == path.resolve()
                     else timing.interleaved_ratio(path, reference, threads, rounds=cfg.get("ratio_rounds", 20),
                                                      warmup=cfg["warmup_runs"], input_sample=sample))
            for key in ("ratio", "ratio_p25", "ratio_p75"):
                row[f"latency_{key}_t{threads}"] = ratio[key]
    memory = timing.peak_memory(path, sample) if cfg.get("measure_memory", True) else {}
    row["peak_rss_mb"], row["model_rss_mb"] = memory.get("peak_rss_mb"), memory.get("model_rss_mb")
    return row


def predictions(interpreter, x_test, keras_predictions, validation) -> tuple[dict, dict]:
    """A classifier file's (predicted class per test image and agreement with its Keras model, {val_accuracy}
    when there is a validation split)."""
    y_pred = predicted_classes(interpreter, x_test)
    outputs = {"y_pred": y_pred.tolist(),
               "keras_agreement": (float(np.mean(y_pred == np.asarray(keras_predictions)))
                                   if keras_predictions is not None else None)}
    if validation is None or not shards.count(validation):
        return outputs, {}
    x_val, y_val = (validation, validation.labels()) if isinstance(validation, shards.StoredSplit) else validation
    return outputs, {"val_accuracy": float(np.mean(predicted_classes(interpreter, x_val) == y_val))}


def detections(interpreter, x_test, validation, decoding: Decoding) -> tuple[dict, dict]:
    """A detector file's (boxes per test image, {val_map} when there is a validation split)."""
    outputs = {"detections": postprocess.to_json(decoding.detect(interpreter, x_test)), "keras_agreement": None}
    if validation is None or not shards.count(validation):
        return outputs, {}
    return outputs, {"val_map": decoding.map(interpreter, validation)}


def predicted_classes(interpreter, images) -> np.ndarray:
    """The class the file predicts for each image, read a batch at a time (a split is never held whole)."""
    return np.concatenate([np.argmax(runtime.predict(interpreter, batch), axis=1)
                           for batch in shards.image_batches(images)])


def counted(names: Sequence[str]) -> str:
    """'AVERAGE_POOL_2D x3, SOFTMAX' from a list of operator names, in order of first appearance."""
    counts = {name: names.count(name) for name in dict.fromkeys(names)}
    return ", ".join(name if count == 1 else f"{name} x{count}" for name, count in counts.items())


def error_row(variant: str, mode: str, reason: str) -> dict:
    """The row of a file that could not be produced or measured: reported, never silently dropped."""
    return {"variant": variant, "mode": mode, "file": str(Path(f"{variants.label(variant, mode)}.tflite")),
            "error": reason}
