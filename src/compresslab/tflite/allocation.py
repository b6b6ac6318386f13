"""Per-layer bit allocation under a size budget: the `mixed` TFLite mode, made from a float32 file.

Every weighted operator (conv, dense) of the float32 file is tried alone at each candidate precision: that
operator quantized by the LiteRT quantizer, the rest left float32. Each try costs what it loses on the
**validation** split (accuracy, in points) and changes the gzipped file by some bytes. An exact integer program
(scipy's `milp`) then picks one precision per operator: the least summed loss whose summed size meets the
target, and among equal losses the larger file (the budget spent on precision, not thrown away). The mixed
file is quantized as chosen; its real gzipped size and its real validation accuracy are recorded beside the
sums the program assumed, so the reader sees whether the additive model held (the test split, untouched
here, grades the file in `evaluate` as it grades every other). gzip sizes do not add exactly (zeros spread over
several layers compress better together): the budget is corrected by what the sums get wrong about the
all-smallest file, which is measured first; a file that still overshoots has the program run again with the
budget cut by the overshoot, and the all-smallest file, which fits, is the last resort.

Precisions: `int4` (int4 weights per output channel, dynamic activations: the `int4` mode's recipe), `int8`
(int8 weights per channel, dynamic activations) and `float32` (left alone).
"""

import re
from dataclasses import dataclass

import numpy as np

from compresslab.errors import UserError
from compresslab.tflite import flatbuffer, runtime

# Each precision's op config, from the recipes of `ai_edge_quantizer.recipe` (None: left float32); the names
# `convert.mixed.precisions` accepts (settings.MIXED_PRECISIONS, checked there).
PRECISION_RECIPES = {"int4": "dynamic_wi4_afp32", "int8": "dynamic_wi8_afp32", "float32": None}
# Among allocations of equal validation loss, prefer the larger file: a tie-break far below one image's worth.
PREFER_PRECISION_PER_BYTE = 1e-9
MAX_SOLVES = 3


@dataclass(frozen=True)
class Target:
    """The gzipped size the mixed file must fit: `bytes`, or the float32 file's size over `ratio` (its size as
    stored, which for unpruned weights is about its gzipped size: the same for every variant of a model, so one
    ratio means one target across variants, as a ratio to baseline-float32 would)."""
    bytes: int | None
    ratio: float | None

    def of(self, float_file: bytes) -> int:
        return int(self.bytes) if self.bytes is not None else int(len(float_file) / self.ratio)


def weighted_scopes(float_file: bytes) -> list[str]:
    """The LiteRT quantizer's scope name (its output tensors' names) of every weighted operator, in graph order."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils  # noqa: PLC0415

    model = tfl_flatbuffer_utils.read_model(bytearray(float_file))
    graph = model.subgraphs[0]
    return [tfl_flatbuffer_utils.get_op_scope(op, graph.tensors) for op in graph.operators
            if flatbuffer.op_name(model, op) in flatbuffer.WEIGHT_OPS]


def quantized(float_file: bytes, precision_of: dict[str, str]) -> bytes:
    """`float_file` with each operator scope of `precision_of` quantized at its precision, the rest float32."""
    from ai_edge_quantizer import quantizer, recipe  # noqa: PLC0415

    entries = []
    for scope, precision in precision_of.items():
        if PRECISION_RECIPES[precision] is None:
            continue
        (entry,) = getattr(recipe, PRECISION_RECIPES[precision])()
        entries.append({**entry, "regex": f"^{re.escape(scope)}$"})
    if not entries:
        return float_file
    return bytes(quantizer.Quantizer(bytearray(float_file), entries).quantize(enable_progress_report=False)
                 .quantized_model)


def accuracy(file: bytes, images: np.ndarray, labels: np.ndarray) -> float:
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    interpreter = Interpreter(model_content=file, num_threads=1)
    interpreter.allocate_tensors()
    return float(np.mean(runtime.predict(interpreter, images).argmax(axis=1) == labels))


def allocate(float_file: bytes, precisions, target: Target, images: np.ndarray, labels: np.ndarray,
             progress=print) -> tuple[bytes, dict]:
    """The mixed file and its allocation record (per operator: precision, measured loss and bytes; the target,
    the sums the program assumed and what the file really gives)."""
    from scipy.optimize import Bounds, LinearConstraint, milp  # noqa: PLC0415

    float_gzip = flatbuffer.gzip_size(float_file)
    budget = target.of(float_file)
    if budget >= len(float_file):
        raise UserError(f"convert.mixed target {budget:,} B is no smaller than the float32 file "
                        f"({len(float_file):,} B): nothing to allocate; lower convert.mixed.bytes or give "
                        f"convert.mixed.ratio instead")
    scopes = weighted_scopes(float_file)
    smallest = min(precisions, key=lambda p: ("int4", "int8", "float32").index(p))
    floor = flatbuffer.gzip_size(quantized(float_file, dict.fromkeys(scopes, smallest)))
    if floor > budget:
        raise UserError(f"convert.mixed target {budget:,} B is out of reach: every layer in {smallest} gives "
                        f"{floor:,} B gzipped; raise the target (convert.mixed.bytes or .ratio) or prune first")
    reference = accuracy(float_file, images, labels)
    choices = [(scope, precision) for scope in scopes for precision in precisions]
    losses, sizes = [], []
    for number, (scope, precision) in enumerate(choices, 1):
        file = quantized(float_file, {scope: precision})
        losses.append(100 * (reference - accuracy(file, images, labels)) if file is not float_file else 0.0)
        sizes.append(flatbuffer.gzip_size(file) - float_gzip)
        progress(f"mixed [{number}/{len(choices)}] {scope.split(';')[0]} in {precision}: "
                 f"{losses[-1]:+.2f} pp validation loss, {sizes[-1]:+,} B")
    losses, sizes = np.array(losses), np.array(sizes, dtype=float)
    one_each = np.zeros((len(scopes), len(choices)))
    for k, (scope, _) in enumerate(choices):
        one_each[scopes.index(scope), k] = 1
    # gzip sizes do not add exactly. The all-smallest file, measured above, shows by how much the sums overstate a
    # small file: the budget the program sees is loosened by that much. A file that still overshoots has the
    # program solve again with the budget cut by the overshoot; if none fits, the all-smallest file does.
    smallest_choices = [k for k, (_, precision) in enumerate(choices) if precision == smallest]
    allowed = budget - float_gzip + max(0.0, float_gzip + sizes[smallest_choices].sum() - floor)
    for _ in range(MAX_SOLVES):
        solved = milp(losses - PREFER_PRECISION_PER_BYTE * sizes, integrality=np.ones(len(choices)),
                      bounds=Bounds(0, 1), constraints=[LinearConstraint(one_each, 1, 1),
                                                        LinearConstraint(sizes[None], -np.inf, allowed)])
        chosen = ([k for k in range(len(choices)) if solved.x[k] > 0.5] if solved.success else smallest_choices)
        mixed = quantized(float_file, {choices[k][0]: choices[k][1] for k in chosen})
        mixed_gzip = flatbuffer.gzip_size(mixed)
        if mixed_gzip <= budget:
            break
        allowed -= mixed_gzip - budget
    else:
        chosen = smallest_choices
        mixed = quantized(float_file, {choices[k][0]: choices[k][1] for k in chosen})
        mixed_gzip = flatbuffer.gzip_size(mixed)
    record = {"target_gzip_bytes": budget, "float32_gzip_bytes": float_gzip,
              "predicted_gzip_bytes": int(float_gzip + sizes[chosen].sum()),
              "gzip_bytes": mixed_gzip, "meets_target": mixed_gzip <= budget,
              "predicted_val_loss_pp": float(losses[chosen].sum()),
              "val_loss_pp": 100 * (reference - accuracy(mixed, images, labels)),
              "layers": [{"scope": choices[k][0], "precision": choices[k][1], "val_loss_pp": float(losses[k]),
                          "gzip_delta_bytes": int(sizes[k]),
                          "tried": {p: {"val_loss_pp": float(losses[j]), "gzip_delta_bytes": int(sizes[j])}
                                    for j, (s, p) in enumerate(choices) if s == choices[k][0]}}
                         for k in chosen]}
    return mixed, record
