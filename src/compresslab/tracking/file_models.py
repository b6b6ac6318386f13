"""Evaluated .tflite files as MLflow logged models: one per file, named by its label, an output of the summary
run, so MLflow 3's Models tab lists every file and sorts them by accuracy (mAP), size or latency ratio, and
`--register` (tools/registry.py) registers the chosen one.

Each model is the file behind LiteRT (`litert_pyfunc.py`, logged as the model's code and executed where the
model is loaded: no TensorFlow, no compresslab), with its signature (float32 images N x H x W x C in [0, 1], as
`prepare` stores them), a test image as its input example, the class names, requirements pinned to this
environment's versions of what serving needs, the file's figures as the model's metrics and its identity as
tags. A detector's model also carries its anchors, its NMS settings and the `detection` package folder
(NumPy-only decoding), and answers with boxes, scores and classes.
"""

import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import LoggedModelOutput, Metric
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Array, ColSpec, DataType, Schema, TensorSpec

PYFUNC_CODE = Path(__file__).with_name("litert_pyfunc.py")
DETECTION_CODE = Path(__file__).resolve().parents[1] / "detection"   # shipped with a detector's model
SERVING_PACKAGES = ("mlflow", "ai-edge-litert", "numpy", "pandas")
# The figures a file's model carries (Models tab columns `file.<figure>`), when the file has them.
METRIC_PREFIX = "file."
FIGURES = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "accuracy_delta_control_pp", "val_accuracy",
           "map", "map50", "map_ci_low", "map_ci_high", "map_delta_control_pp", "val_map",
           "gzip_bytes", "file_bytes", "gzip_ratio", "sparsity", "latency_ratio", "peak_rss_mb")


@dataclass(frozen=True)
class Served:
    """What every model of one study shares: the classes it answers with and the images it takes."""
    class_names: Sequence[str]
    image_size: int
    channels: int
    example: np.ndarray | None = None   # test images, the models' input example (None: none)
    anchors: np.ndarray | None = None   # a detector's (A, 4) [cy, cx, h, w]
    decoding: Mapping | None = None     # a detector's NMS settings (`postprocess.Decoder.settings()`)

    @property
    def task(self) -> str:
        return "classification" if self.anchors is None else "detection"

    def signature(self) -> ModelSignature:
        # Unnamed tensor: `predict` gets the array itself. MLflow refuses another shape or dtype before it.
        images = Schema([TensorSpec(np.dtype(np.float32), (-1, self.image_size, self.image_size, self.channels))])
        if self.task == "detection":
            return ModelSignature(inputs=images, outputs=Schema([
                ColSpec(Array(Array(DataType.float)), "boxes"), ColSpec(Array(DataType.float), "scores"),
                ColSpec(Array(DataType.string), "classes"), ColSpec(Array(DataType.long), "class_index")]))
        return ModelSignature(inputs=images, outputs=Schema([
            ColSpec(DataType.string, "class"), ColSpec(DataType.long, "class_index"),
            ColSpec(Array(DataType.float), "probabilities")]))


@dataclass(frozen=True)
class FileModel:
    label: str                      # <variant>-<mode>: the model's name
    path: Path                      # the .tflite file
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    config: Mapping = field(default_factory=dict)   # this file's own model config (a detector's output indices)


def served_study(meta: Mapping, conversion: Mapping, example: np.ndarray | None) -> Served:
    """What the models of one study share, from prepare's meta.json and a variant's conversion.json (a
    detector's anchors and NMS settings, as `evaluate` decoded its files)."""
    from compresslab.tflite.measure import Decoding  # noqa: PLC0415  (LiteRT)

    size, channels = int(meta["image_size"]), int(meta["channels"])
    decoding = Decoding.from_record(conversion, meta)
    if decoding is None:
        return Served(meta["class_names"], size, channels, example)
    return Served(meta["class_names"], size, channels, example, anchors=decoding.decoder.anchors,
                  decoding=decoding.decoder.settings())


def file_config(path: Path, served: Served) -> dict:
    """A detector file's own model config: which output is the boxes and which the scores (the converter does
    not promise their order; `runtime.detector_outputs` reads the file's signature)."""
    if served.task != "detection":
        return {}
    from compresslab.tflite import runtime  # noqa: PLC0415

    boxes, scores = runtime.detector_outputs(runtime.load_interpreter(path))
    return {"boxes_output": int(boxes["index"]), "scores_output": int(scores["index"])}


def figures_of(record) -> dict[str, float]:
    """The FIGURES a result record holds, as floats."""
    return {name: float(value) for name in FIGURES if (value := getattr(record, name, None)) is not None}


def log_models(uri: str, run_id: str, files: Sequence[FileModel], served: Served) -> dict[str, str]:
    """Log each file as a model of run `run_id` in the store at `uri`; {label: model id}."""
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            anchors = None
            if served.anchors is not None:
                anchors = Path(scratch) / "anchors.npy"
                np.save(anchors, np.asarray(served.anchors, np.float32))
            return {file.label: _log(client, run, step, file, served, anchors) for step, file in enumerate(files)}
    finally:
        mlflow.set_tracking_uri(previous)


def _log(client, run, step: int, file: FileModel, served: Served, anchors: Path | None) -> str:
    """One file's model, created as an output of `run` and filled outside any active run: logged inside one,
    MLflow copies every metric of the run onto the model (the summary has about a thousand), 1.6 s a file."""
    detector = served.task == "detection"
    model = client.create_logged_model(run.info.experiment_id, name=file.label, source_run_id=run.info.run_id,
                                       tags={"file": f"{file.label}.tflite", **file.tags})
    config = {"task": served.task, "class_names": list(served.class_names), "num_threads": 1,
              **({"decoding": dict(served.decoding or {})} if detector else {}), **file.config}
    mlflow.pyfunc.log_model(
        name=file.label, model_id=model.model_id, python_model=str(PYFUNC_CODE), model_config=config,
        signature=served.signature(), input_example=served.example,
        artifacts={"tflite": str(file.path), **({"anchors": str(anchors)} if detector else {})},
        code_paths=[str(DETECTION_CODE)] if detector else None,
        pip_requirements=[f"{name}=={metadata.version(name)}" for name in SERVING_PACKAGES])
    client.log_outputs(run.info.run_id, [LoggedModelOutput(model.model_id, step=step)])
    # The model's figures are metrics of the run linked to the model; `file.` keeps them apart from the
    # summary's own `<variant>.<mode>.<figure>` keys (the run's `file.*` series hold one point per file).
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[
        Metric(f"{METRIC_PREFIX}{name}", value, now, step, model_id=model.model_id)
        for name, value in file.metrics.items()])
    return model.model_id


def found_model(client, run, label: str):
    """The LoggedModel named `label` that run `run` logged, or None."""
    found = client.search_logged_models([run.info.experiment_id],
                                        filter_string=f"name = '{label}' AND source_run_id = '{run.info.run_id}'")
    return found[0] if found else None
