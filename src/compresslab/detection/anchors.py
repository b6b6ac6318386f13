"""Anchor boxes of a one-stage detector (SSD / YOLO style), declared in the model config.

A detector predicts, at every cell of each feature level and for every anchor there, four box regressions and
one score per class. The model's outputs and these anchors are in the same order: level (in stride order), then
row, then column, then anchor (size-major, aspect-ratio-minor), which is what a Keras `Reshape((-1, 4))` of a
(rows, cols, anchors * 4) convolution output gives.

    model:
      anchors:
        strides: [16, 32]                  # one feature level per stride (pixels of input per cell)
        sizes: [[0.15, 0.25], [0.4, 0.65]] # per level: anchor sides as fractions of the image side
        aspect_ratios: [1.0, 2.0, 0.5]     # width / height, the same at every level
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from compresslab.errors import UserError


@dataclass(frozen=True)
class AnchorSpec:
    """The anchors of a detector for square inputs of `image_size` pixels."""
    image_size: int
    strides: tuple[int, ...]
    sizes: tuple[tuple[float, ...], ...]
    aspect_ratios: tuple[float, ...]

    def __post_init__(self):
        if len(self.sizes) != len(self.strides):
            raise UserError(f"model.anchors.sizes has {len(self.sizes)} levels but model.anchors.strides has "
                            f"{len(self.strides)}: give one list of sizes per stride")
        if len({len(level) for level in self.sizes}) != 1:
            raise UserError(f"model.anchors.sizes={[list(level) for level in self.sizes]} must give every level "
                            f"the same number of sizes (the heads predict the same anchors per cell)")

    @property
    def per_location(self) -> int:
        """Anchors at each cell of every level."""
        return len(self.sizes[0]) * len(self.aspect_ratios)

    def grid(self, level: int) -> int:
        """Cells per side of feature level `level`: a 'same'-padded stride-2 stack gives ceil(size / stride)."""
        return math.ceil(self.image_size / self.strides[level])

    @property
    def count(self) -> int:
        return sum(self.grid(level) ** 2 * self.per_location for level in range(len(self.strides)))

    def boxes(self) -> np.ndarray:
        """Every anchor as float32 (count, 4) [cy, cx, h, w], fractions of the image, in the outputs' order."""
        rows = []
        for level, stride in enumerate(self.strides):
            cells = self.grid(level)
            centres = (np.arange(cells, dtype=np.float64) + 0.5) * stride / self.image_size
            shapes = [(size / math.sqrt(ratio), size * math.sqrt(ratio))   # (h, w): w / h = ratio, area = size^2
                      for size in self.sizes[level] for ratio in self.aspect_ratios]
            for cy in centres:
                for cx in centres:
                    rows.extend((cy, cx, h, w) for h, w in shapes)
        return np.asarray(rows, np.float32)


def anchor_spec(model_cfg: Mapping, image_size: int, default: Mapping) -> AnchorSpec:
    """The AnchorSpec of `model_cfg['anchors']` (keys missing there taken from the builder's `default`)."""
    given = {**default, **dict(model_cfg.get("anchors") or {})}
    return AnchorSpec(image_size=int(image_size), strides=tuple(int(s) for s in given["strides"]),
                      sizes=tuple(tuple(float(v) for v in level) for level in given["sizes"]),
                      aspect_ratios=tuple(float(r) for r in given["aspect_ratios"]))
