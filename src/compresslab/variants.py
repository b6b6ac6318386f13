"""The Keras variants the pipeline produces, and the TFLite files each becomes.

Float variants get every post-training mode of `convert.modes`; QAT-trained variants carry their own
quantization ranges and become int8 files. `finetune` is the float control: the baseline fine-tuned with the
compression stages' budget and no compression, so an effect can be told apart from extra training.
A file is named by its label `<variant>-<mode>` (see `paths.tflite_file`).
"""

# The TFLite modes a float variant can convert to, in the order reports list them.
MODES = ("float32", "dynamic", "float16", "int8")
FLOAT_VARIANTS = ("baseline", "finetune", "pruned", "clustered")
QAT_VARIANTS = ("qat", "pqat", "cqat", "pcqat")
VARIANTS = FLOAT_VARIANTS + QAT_VARIANTS
BASELINE = "baseline"
CONTROL = "finetune"
BASELINE_FILE = "baseline-float32"


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
