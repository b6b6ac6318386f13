"""A detector's keys of the `model` group (`settings.ModelConfig.anchors` and `.nms`): its anchors, and how its
raw outputs become boxes. Pydantic only, so the settings boundary reads them without TensorFlow.

    model:
      name: ssdlite_mobilenetv2
      anchors: {strides: [8, 16], sizes: [[0.14, 0.18], [0.23, 0.3]], aspect_ratios: [1.2, 0.8, 0.5]}
      nms: {iou: 0.5, max_detections: 100}
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict

from compresslab.validation import is_number, positive, rule, whole_from


class AnchorsConfig(BaseModel):
    """model.anchors of a detector (see detection/anchors.py): one feature level per stride, the anchor sides
    of each level as fractions of the image side, the width / height ratios used at every level."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    strides: Annotated[list[int], rule((lambda v: isinstance(v, list) and v and all(
        map(whole_from(2), v)) and v == sorted(set(v)), "{key}={value!r} must be an increasing list of strides "
                                                        "(pixels per cell), e.g. [16, 32]"))]
    sizes: Annotated[list[list[int | float]], rule((lambda v: isinstance(v, list) and v and all(
        isinstance(level, list) and level and all(is_number(s) and 0 < s <= 1 for s in level) for level in v),
        "{key}={value!r} must be one list per stride of anchor sides as fractions of the image in (0, 1]"))]
    aspect_ratios: Annotated[list[int | float], rule((lambda v: isinstance(v, list) and v and all(
        map(positive, v)), "{key}={value!r} must be a list of width / height ratios above 0, e.g. [1.0, 2.0, 0.5]"))]
    match_iou: Annotated[int | float, rule((lambda v: is_number(v) and 0 < v < 1, "{key} must lie in (0, 1), "
                                            "got {value!r}: the IoU at which an anchor learns a box, e.g. 0.5"))] = 0.5


class NmsConfig(BaseModel):
    """model.nms of a detector: the non-maximum suppression after its raw outputs are decoded. Part of the model,
    not of `evaluate`, because every stage that scores a detector (training, convert's Keras reference, the
    per-layer sensitivity, evaluate) must decode it alike for their mAPs to compare."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    iou: Annotated[int | float, rule((lambda v: is_number(v) and 0 < v < 1, "{key} must lie in (0, 1), got "
                                      "{value!r}: boxes of one class overlapping more are suppressed"))] = 0.5
    max_detections: Annotated[int, rule((whole_from(1), "{key} must be a whole number >= 1, got {value!r}: the "
                                                        "boxes kept per image, 100 as COCO"))] = 100
