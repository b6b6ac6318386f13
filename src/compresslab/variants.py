"""The Keras variants the pipeline produces, and the TFLite files each becomes.

Float variants get every post-training mode of `convert.modes`; QAT-trained variants carry their own
quantization ranges and become int8 files. `finetune` is the float control: the baseline fine-tuned with the
compression stages' budget and no compression, so an effect can be told apart from extra training.
A file is named by its label `<variant>-<mode>` (see `paths.tflite_file`).
"""

from dataclasses import dataclass

# The TFLite modes a float variant can convert to, in the order reports list them: the TFLite converter's four,
# then two that the LiteRT quantizer makes from the float32 file (int4 weights with dynamically quantized
# activations; int8 weights dequantized at load, float compute; see tflite/converter.py), and `mixed`, a
# precision per layer chosen under a size target (tflite/allocation.py).
MODES = ("float32", "dynamic", "float16", "int8", "int4", "int8_weights", "mixed")


@dataclass(frozen=True)
class Variant:
    """One Keras model the pipeline makes.

    name: the model's file (models/<name>.keras) and the prefix of its .tflite labels (<name>-<mode>).
    stage: the DVC stage, and stages/<stage>.py, that makes it.
    parent: the variant its stage starts from (None: trained from scratch).
    qat: trained with quantization wrappers, so it carries its own ranges and becomes an int8 file only.
    """
    name: str
    stage: str
    parent: str | None
    qat: bool = False


# Every variant, declared once, in the order the report lists them: the DVC stage that makes it (its script
# stages/<stage>.py and its config group conf/<stage>/), the variant that stage starts from, and whether it
# trains with quantization wrappers. Plain literals on purpose: dvc.yaml loads this mapping as `vars` (DVC reads
# a Python file's literal assignments) and runs `convert@<variant>` and `evaluate@<variant>` for each key, so a
# variant declared here is converted, evaluated and reported with no list to edit anywhere else.
# tests/test_dvc_deps.py checks that each stage makes its variant from its parent.
DECLARATIONS = {
    "baseline": {"stage": "train", "parent": None},
    "finetune": {"stage": "finetune", "parent": "baseline"},   # the float control: no compression
    "pruned": {"stage": "prune", "parent": "baseline"},
    "qat": {"stage": "quantize", "parent": "baseline", "qat": True},
    "pqat": {"stage": "pqat", "parent": "pruned", "qat": True},
    "clustered": {"stage": "cluster", "parent": "baseline"},
    "cqat": {"stage": "cqat", "parent": "clustered", "qat": True},
    "pcqat": {"stage": "pcqat", "parent": "pruned", "qat": True},
}
DECLARED = tuple(Variant(name, **fields) for name, fields in DECLARATIONS.items())
REPORT_ORDER = tuple(variant.name for variant in DECLARED)
FLOAT_VARIANTS = tuple(variant.name for variant in DECLARED if not variant.qat)
QAT_VARIANTS = tuple(variant.name for variant in DECLARED if variant.qat)
VARIANTS = FLOAT_VARIANTS + QAT_VARIANTS   # the order files are converted, evaluated and listed in variants.csv
BASELINE = "baseline"
CONTROL = "finetune"
BASELINE_FILE = "baseline-float32"


def made_by(stage: str) -> Variant:
    """The variant that DVC stage `stage` makes."""
    return next(variant for variant in DECLARED if variant.stage == stage)


def modes_of(variant: str, modes) -> list[str]:
    """The TFLite modes `variant` converts to, given the configured `convert.modes`."""
    return list(modes) if variant in FLOAT_VARIANTS else ["int8"]


def is_qat(variant: str) -> bool:
    return variant in QAT_VARIANTS


def label(variant: str, mode: str) -> str:
    return f"{variant}-{mode}"


def split_label(stem: str) -> tuple[str, str]:
    """'pruned-int8' -> ('pruned', 'int8')."""
    variant, _, mode = stem.rpartition("-")
    return variant, mode
