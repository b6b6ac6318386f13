"""Where the pipeline's files live. The one module that names them; it imports nothing heavy, so every stage and
tool (including those that must start without TensorFlow) can use it. Paths are relative to the project root,
where DVC runs every stage.
"""

from pathlib import Path

PREPARED = Path("data/prepared")      # the splits `prepare` writes
MODELS = Path("models")               # one Keras file per variant
TFLITE = MODELS / "tflite"            # one folder of .tflite files per variant
REPORTS = Path("reports")
PLOTS = REPORTS / "plots"
EVALUATIONS = REPORTS / "evaluate"    # what `evaluate@<variant>` measured, one JSON per variant
DEVICE_TIMINGS = REPORTS / "devices"  # what `device@<variant>` measured on evaluate.devices, one JSON per variant


def keras_model(variant: str) -> Path:
    return MODELS / f"{variant}.keras"


def tflite_dir(variant: str) -> Path:
    return TFLITE / variant


def tflite_file(variant: str, mode: str) -> Path:
    """models/tflite/<variant>/<variant>-<mode>.tflite: the stem names the file wherever it is copied."""
    return tflite_dir(variant) / f"{variant}-{mode}.tflite"


def conversion_record(variant: str) -> Path:
    """What `convert@<variant>` did: bytes per file, failures, the Keras model's test predictions."""
    return tflite_dir(variant) / "conversion.json"


def evaluation(variant: str) -> Path:
    return EVALUATIONS / f"{variant}.json"


def device_timing(variant: str) -> Path:
    return DEVICE_TIMINGS / f"{variant}.json"


def stage_reports(stage: str) -> Path:
    """reports/<stage>/: the stage's metrics.json, history.csv and layers.json."""
    return REPORTS / stage
