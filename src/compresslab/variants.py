"""The Keras variants the pipeline produces, and how each becomes TFLite files.

Float variants get every post-training mode of `convert.modes`; QAT-trained variants carry their own
quantization ranges and become int8 files. Files are named `models/tflite/<variant>-<mode>.tflite`.
"""

from pathlib import Path

FLOAT_VARIANTS = {"baseline": "models/baseline.keras", "pruned": "models/pruned.keras",
                  "clustered": "models/clustered.keras"}
QAT_VARIANTS = {"qat": "models/qat.keras", "pqat": "models/pqat.keras", "cqat": "models/cqat.keras",
                "pcqat": "models/pcqat.keras"}
TFLITE_DIR = Path("models/tflite")
BASELINE_FILE = "baseline-float32"


def conversions(modes: list[str]) -> list[tuple[str, str, str, bool]]:
    """(variant, Keras model path, mode, is_qat) for every file to produce, float variants first."""
    planned = [(variant, path, mode, False) for variant, path in FLOAT_VARIANTS.items() for mode in modes]
    return planned + [(variant, path, "int8", True) for variant, path in QAT_VARIANTS.items()]


def tflite_path(variant: str, mode: str) -> Path:
    return TFLITE_DIR / f"{variant}-{mode}.tflite"


def split_label(stem: str) -> tuple[str, str]:
    """'pruned-int8' -> ('pruned', 'int8')."""
    variant, _, mode = stem.rpartition("-")
    return variant, mode
