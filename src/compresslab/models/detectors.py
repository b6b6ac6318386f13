"""One-stage object detectors: flat tf_keras models whose outputs line up with their anchors.

    from compresslab.models import detectors
    model = detectors.ssdlite_mobilenetv2((96, 96, 3), 10, {"name": "ssdlite_mobilenetv2", "alpha": 0.35})
    spec = detectors.anchors_for({"name": "ssdlite_mobilenetv2"}, 96)   # spec.count == model's anchors

Every detector takes pixels in [0, 1] and has two outputs, in this order:
  boxes   (batch, A, 4): raw box regressions, linear, one row per anchor of `AnchorSpec.boxes()`;
  scores  (batch, A, C): per-class probabilities (sigmoid, no background class).
Rows run level (stride order), row, column, anchor: a Reshape((-1, k)) of each level's (rows, cols,
anchors * k) convolution, levels concatenated. A level of stride s has ceil(image_size / s) cells per side.

Like the zoo's classifiers they are built only from Keras layers (no TFOpLambda, nested models or Rescaling), so
TFMOT's pruning, clustering and default 8-bit QAT scheme wrap them, and the converted file keeps both outputs
under their names in its signature (`Interpreter.get_signature_runner()` returns {'boxes': ..., 'scores': ...};
after TFMOT's quantize_apply, which renames every layer quant_<name>, {'quant_boxes': ..., 'quant_scores': ...}).
"""

import math
from collections.abc import Callable, Mapping

import tf_keras as keras

from compresslab.detection.anchors import AnchorSpec, anchor_spec
from compresslab.errors import UserError
from compresslab.models.conventions import BN_MOMENTUM, divisible
# The classifier's block table. zoo imports this module only inside `builders`, so importing zoo here is not
# circular; zoo must keep it so.
from compresslab.models.zoo import MOBILENETV2_BLOCKS

layers = keras.layers

# RetinaNet's prior: the score head starts at p = 0.01 for every class and anchor, so the thousands of
# background anchors do not swamp the first steps with a large loss (Lin et al. 2017, section 4.1). Heads start
# from small normal weights for the same reason (all logits at the prior, all boxes at their anchors): a new
# initializer per layer, since Keras gives every layer sharing one unseeded instance the same values.
PRIOR = 0.01
SCORE_BIAS = -math.log((1 - PRIOR) / PRIOR)
# The finest stride any backbone here gives as a feature level (both have features at 8, 16, 32, ... only).
MIN_STRIDE = 8

# Defaults for the bundled sample (data/detection_sample.py): tight boxes around MNIST strokes scaled to 18-44
# pixels on 96x96 canvases. Measured on 1,415 of its boxes: sqrt(area) 0.09 to 0.33 of the side (median 0.20),
# width / height 0.43 to 1.22 (5th-95th percentile; ones about 0.5, other digits about 0.8). Sizes are sqrt(area)
# as fractions of the side; the ratios 0.5, 0.8 and 1.2 follow the measured shapes (wide anchors like 2.0 would
# match nothing). On grids this coarse the centre offset, not the size, limits the overlap, so anchors a little
# larger than the boxes match best (they still contain an off-centre box): the sizes below were picked on those
# boxes for the share whose best anchor has IoU >= 0.5 (SSD's matching threshold) and the mean best IoU.

SSDLITE_ANCHORS = {
    # Taps at stride 8 (12x12 cells at 96) and 16 (6x6); 2 sizes x 3 ratios per cell, 1,080 anchors. Best IoU
    # >= 0.5 for 82 % of the sample's boxes (mean 0.60). SSDLite's classic taps, strides [16, 32] with sizes
    # [[0.18, 0.23], [0.29, 0.36]], reach 47 % (mean 0.49): the 16-pixel grid is coarse for 18-pixel digits.
    "strides": [8, 16], "sizes": [[0.14, 0.18], [0.23, 0.3]], "aspect_ratios": [1.2, 0.8, 0.5]}
YOLO_ANCHORS = {
    # YOLOv5's three levels (12x12, 6x6, 3x3 cells at 96), three anchors per cell (one size x 3 ratios), 567
    # anchors. Best IoU >= 0.5 for 78 % of the sample's boxes (mean 0.58).
    "strides": [8, 16, 32], "sizes": [[0.18], [0.25], [0.36]], "aspect_ratios": [1.2, 0.8, 0.5]}


def ssdlite_mobilenetv2(input_shape, num_classes: int, cfg: Mapping) -> keras.Model:
    """SSDLite with a MobileNetV2 backbone of width `alpha` (Sandler et al. 2018, section 6.2).

    The backbone is the zoo's mobilenetv2 (same blocks, ZeroPadding2D + 'valid' stride-2 convolutions) without
    its classifier. Levels are tapped where TF Object Detection API's SSDLite taps them: a block's expansion
    output just before it halves the grid (stride 8: block 6, stride 16: block 13), and the last 1x1 convolution
    (stride 32), which here scales with alpha as in that API (the classifier keeps 1280 channels). Strides 64 and
    up come from extra layers (1x1, depthwise 3x3 stride 2, 1x1). Each level has its own box and score heads:
    depthwise 3x3 + BN + ReLU6, then a pointwise convolution.
    """
    spec = _checked_spec("ssdlite_mobilenetv2", cfg, input_shape)
    if min(input_shape[:2]) < 32:
        raise UserError(f"data.image_size={input_shape[0]} is too small for ssdlite_mobilenetv2: use 32 or more")
    alpha = float(cfg.get("alpha", 0.35))

    def batch_norm_relu6(x, activate=True):
        x = layers.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM)(x)
        return layers.ReLU(6.0)(x) if activate else x

    def pointwise(x, filters, activate=True):
        return batch_norm_relu6(layers.Conv2D(filters, 1, use_bias=False)(x), activate)

    def depthwise(x, stride):
        if stride == 2:  # symmetric padding, as in the zoo: ceil(n / 2) cells and XNNPACK-friendly
            x = layers.ZeroPadding2D(1)(x)
        return batch_norm_relu6(layers.DepthwiseConv2D(3, strides=stride, padding="same" if stride == 1 else "valid",
                                                       use_bias=False)(x))

    inputs = layers.Input(shape=tuple(input_shape), name="images")
    x = layers.ZeroPadding2D(1)(inputs)
    x = batch_norm_relu6(layers.Conv2D(divisible(32 * alpha), 3, strides=2, padding="valid", use_bias=False)(x))
    stride, features = 2, {}
    for block, (filters, block_stride, expansion) in enumerate(MOBILENETV2_BLOCKS):
        block_input, channels = x, int(x.shape[-1])
        if block:
            x = pointwise(x, expansion * channels)
        if block_stride == 2:
            features[stride] = x
            stride *= 2
        x = depthwise(x, block_stride)
        out_channels = divisible(filters * alpha)
        x = pointwise(x, out_channels, activate=False)
        if block_stride == 1 and channels == out_channels:
            x = layers.Add()([block_input, x])
    features[stride] = x = pointwise(x, divisible(1280 * alpha))
    extra_channels = divisible(256 * alpha)
    while stride < spec.strides[-1]:  # SSD's extra feature layers, halving the grid each
        x = pointwise(depthwise(pointwise(x, extra_channels // 2), 2), extra_channels)
        stride *= 2
        features[stride] = x

    def head(x, outputs, name, bias):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_depthwise")(x)
        x = layers.ReLU(6.0, name=f"{name}_relu6")(layers.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM,
                                                                             name=f"{name}_bn")(x))
        return layers.Conv2D(outputs, 1, kernel_initializer=_head_init(), bias_initializer=bias, name=name)(x)

    levels = _levels(spec, features, "ssdlite_mobilenetv2")
    box_maps = [head(x, spec.per_location * 4, f"boxes_{s}", "zeros") for s, x in zip(spec.strides, levels)]
    score_maps = [head(x, spec.per_location * num_classes, f"scores_{s}", keras.initializers.Constant(SCORE_BIAS))
                  for s, x in zip(spec.strides, levels)]
    return _detector(inputs, spec, box_maps, score_maps, num_classes, f"ssdlite_mobilenetv2_{alpha:g}")


def yolo_grid(input_shape, num_classes: int, cfg: Mapping) -> keras.Model:
    """A YOLOv5-style detector at toy scale: CSP backbone, FPN neck, 1x1 heads at strides 8, 16 and 32.

    Backbone: a 3x3 stride-2 stem of `width` channels, then per halving a 3x3 stride-2 convolution and a C3
    block (YOLOv5's CSP bottleneck), channels doubling up to 16 * width. Neck: top-down, each finer level
    concatenates the upsampled (nearest) coarser one with its backbone feature and runs a C3. Heads: one 1x1
    convolution for boxes and one for scores per level (YOLOv5 has one conv with objectness; here the class
    scores carry it, and two convolutions avoid slicing, which would put tf ops in the graph).

    Activations are ReLU, not YOLOv5's SiLU: SiLU is x * sigmoid(x), a Multiply layer TFMOT's default QAT scheme
    refuses (#733) and a LOGISTIC + MUL pair in int8; ReLU fuses into the convolution in TFLite (no op of its
    own) in float and int8, and XNNPACK runs every op. Stride-2 convolutions pad 'same', which gives the
    ceil(image_size / stride) cells the anchors expect.
    """
    spec = _checked_spec("yolo_grid", cfg, input_shape)
    width = cfg.get("width", 16)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise UserError(f"model.width={width!r} must be a positive integer (the stem's channels): e.g. 16")

    def channels(stride):
        return width * min(stride, 32) // 2

    inputs = layers.Input(shape=tuple(input_shape), name="images")
    x, stride, features = _conv(inputs, width, 3, 2), 2, {}
    while stride < spec.strides[-1]:
        stride *= 2
        x = _c3(_conv(x, channels(stride), 3, 2), channels(stride), shortcut=True)
        features[stride] = x
    levels = _levels(spec, features, "yolo_grid")
    for i in range(len(levels) - 2, -1, -1):  # top-down: the level above, upsampled, joins this one
        lateral = _conv(levels[i + 1], channels(spec.strides[i]), 1)
        up = layers.UpSampling2D(spec.strides[i + 1] // spec.strides[i], interpolation="nearest")(lateral)
        excess = int(up.shape[1]) - spec.grid(i)  # ceil grids: 2 x ceil(n / 2s) can exceed ceil(n / s) by one
        if excess:
            up = layers.Cropping2D(((0, excess), (0, excess)))(up)
        levels[i] = _c3(layers.Concatenate()([up, levels[i]]), channels(spec.strides[i]), shortcut=False)
    box_maps = [layers.Conv2D(spec.per_location * 4, 1, kernel_initializer=_head_init(), name=f"boxes_{s}")(x)
                for s, x in zip(spec.strides, levels)]
    score_maps = [layers.Conv2D(spec.per_location * num_classes, 1, kernel_initializer=_head_init(),
                                bias_initializer=keras.initializers.Constant(SCORE_BIAS), name=f"scores_{s}")(x)
                  for s, x in zip(spec.strides, levels)]
    return _detector(inputs, spec, box_maps, score_maps, num_classes, f"yolo_grid_{width}")


def _head_init() -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(stddev=0.01)


def _conv(x, filters, kernel, stride=1):
    """Conv-BN-ReLU, YOLOv5's `Conv` with ReLU for SiLU."""
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
    return layers.ReLU()(layers.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM)(x))


def _c3(x, filters, shortcut):
    """YOLOv5's C3: two 1x1 halves, one through a bottleneck (1x1, 3x3, residual if `shortcut`), concatenated."""
    half = max(filters // 2, 1)
    kept, y = _conv(x, half, 1), _conv(x, half, 1)
    z = _conv(_conv(y, half, 1), half, 3)
    y = layers.Add()([y, z]) if shortcut else z
    return _conv(layers.Concatenate()([kept, y]), filters, 1)


def _checked_spec(name: str, cfg: Mapping, input_shape) -> AnchorSpec:
    """The model's anchors for this square input, refused early when its strides are not ones it has."""
    if len(input_shape) != 3 or input_shape[0] != input_shape[1]:
        raise UserError(f"{name} takes square images, got input shape {tuple(input_shape)}: set data.image_size "
                        f"to one number")
    spec = anchors_for({**cfg, "name": name}, int(input_shape[0]))
    strides = list(spec.strides)
    powers = all(s >= MIN_STRIDE and s & (s - 1) == 0 for s in strides)
    if not powers or strides != sorted(set(strides)):
        raise UserError(f"model.anchors.strides={strides} does not fit {name} at data.image_size={spec.image_size}: "
                        f"give increasing powers of two from {MIN_STRIDE} (e.g. {DEFAULTS[name]['strides']})")
    return spec


def _levels(spec: AnchorSpec, features: Mapping, name: str) -> list:
    """The backbone features at `spec.strides`, each checked to have the anchors' ceil(size / stride) cells."""
    levels = []
    for level, stride in enumerate(spec.strides):
        x = features[stride]
        cells, want = tuple(int(d) for d in x.shape[1:3]), (spec.grid(level),) * 2
        if cells != want:
            raise UserError(f"model.anchors.strides={list(spec.strides)}: {name}'s stride-{stride} level has "
                            f"{cells[0]}x{cells[1]} cells at data.image_size={spec.image_size} but the anchors "
                            f"need {want[0]}x{want[1]}: choose another data.image_size or strides")
        levels.append(x)
    return levels


def _detector(inputs, spec: AnchorSpec, box_maps, score_maps, num_classes: int, name: str) -> keras.Model:
    """The model with outputs `boxes` (batch, A, 4) and `scores` (batch, A, C), rows in the anchors' order.

    Each Reshape names its row count instead of -1: with -1 the converted file's outputs have shape (1, 1, k)
    until the first invoke (a dynamic dimension), with the count they read (1, A, k) from the start.
    """
    rows = [spec.grid(level) ** 2 * spec.per_location for level in range(len(spec.strides))]
    if len(box_maps) == 1:
        boxes = layers.Reshape((rows[0], 4), name="boxes")(box_maps[0])
        logits = layers.Reshape((rows[0], num_classes))(score_maps[0])
    else:
        boxes = layers.Concatenate(axis=1, name="boxes")([layers.Reshape((n, 4))(m) for n, m in zip(rows, box_maps)])
        logits = layers.Concatenate(axis=1)([layers.Reshape((n, num_classes))(m) for n, m in zip(rows, score_maps)])
    scores = layers.Activation("sigmoid", name="scores")(logits)
    return keras.Model(inputs, [boxes, scores], name=name)


DETECTORS: dict[str, Callable[..., keras.Model]] = {"ssdlite_mobilenetv2": ssdlite_mobilenetv2,
                                                    "yolo_grid": yolo_grid}
DEFAULTS: dict[str, Mapping] = {"ssdlite_mobilenetv2": SSDLITE_ANCHORS, "yolo_grid": YOLO_ANCHORS}


def is_detector(name: str) -> bool:
    """True when model `name` is one of DETECTORS (outputs boxes and scores, not class probabilities)."""
    return name in DETECTORS


def anchors_for(cfg: Mapping, image_size: int) -> AnchorSpec:
    """The anchors of detector `cfg['name']` at `image_size`: `cfg['anchors']` over the model's defaults.

    Raises UserError when `cfg['name']` is not a detector.
    """
    name = cfg.get("name")
    if name not in DEFAULTS:
        raise UserError(f"model {name!r} is not a detector: use model={'|'.join(DETECTORS)} for detection")
    return anchor_spec(cfg, image_size, DEFAULTS[name])
