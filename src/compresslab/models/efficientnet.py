"""The EfficientNet family: B0 from tf_keras.applications, and EfficientNet-Lite0, the variant made for int8 on
edge devices, built from its published architecture. Both get the zoo's classification head (global average
pooling, dropout 0.2, a softmax Dense) and take pixels already scaled to [0, 1] by the data pipeline.

Why B0 loses its first layers: tf_keras' EfficientNetB0 scales and normalises pixels inside the model
(Rescaling, Normalization), which TFMOT's default QAT scheme does not take (tensorflow/model-optimization#647)
and which the data pipeline already does. `efficientnet_b0` rebuilds the application from its config with those
layers left out, so every other layer (names, shapes, initialisers) is the application's.
Its squeeze-excite `Multiply` (#733) has no entry in TFMOT's registry: `techniques/quantization.py` gives it
TFMOT's output-only quantize config (`QUANTIZE_CONFIGS`), which is how TFMOT treats `Add`.

EfficientNet-Lite (tensorflow/tpu models/official/efficientnet/lite): the B0 blocks without squeeze-excite and
with ReLU6 instead of swish (ReLU6 fuses into the int8 kernels and bounds the activation ranges; swish does
neither), and the stem and head widths fixed; at width and depth 1.0 (Lite0) these equal B0's.

`model.alpha` and `model.depth` are EfficientNet's width and depth coefficients (1.0: B0 and Lite0 as published;
B1-B4 scale both). The suite's tiny configs shrink them so an end-to-end run takes minutes, with every layer type.
"""

import math
from collections.abc import Mapping

import tf_keras as keras
from tf_keras.src.applications.efficientnet import CONV_KERNEL_INITIALIZER, DEFAULT_BLOCKS_ARGS, EfficientNet

from compresslab.errors import UserError
from compresslab.models.conventions import BN_MOMENTUM, divisible

layers = keras.layers

# Layers of the application that scale pixels, left out: the data pipeline hands the model [0, 1] pixels.
INPUT_SCALING = ("Rescaling", "Normalization")
MIN_IMAGE_SIZE = 32   # five stride-2 stages; keras.applications refuses smaller inputs
DROPOUT = 0.2         # before the classifier, as in B0 and Lite0
DROP_CONNECT = 0.2    # the residual branches' drop rate, growing linearly to this over the blocks


def _check_size(input_shape, name: str) -> None:
    if min(input_shape[:2]) < MIN_IMAGE_SIZE or input_shape[2] != 3:
        raise UserError(f"{name} needs RGB images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}, got "
                        f"{'x'.join(map(str, input_shape))}: set data.image_size={MIN_IMAGE_SIZE} or more and "
                        f"data.channels=3")


def classifier_head(x, num_classes: int):
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(DROPOUT, name="top_dropout")(x)
    return layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def rebuilt_for_training(model: keras.Model) -> keras.Model:
    """`model` rebuilt from its config without its Rescaling / Normalization layers (what fed one of them feeds
    what read it) and with BatchNorm momentum BN_MOMENTUM. Weights are not carried over (the caller builds a
    fresh model)."""
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["momentum"] = BN_MOMENTUM
    dropped = {layer["name"]: layer["inbound_nodes"][0][0] for layer in config["layers"]
               if layer["class_name"] in INPUT_SCALING}

    def source(node):   # follow a chain of dropped layers back to the tensor that fed the first of them
        while node[0] in dropped:
            node = dropped[node[0]]
        return list(node[:3])   # (layer, node index, tensor index)

    kept = []
    for layer in config["layers"]:
        if layer["name"] in dropped:
            continue
        layer["inbound_nodes"] = [[source(inbound) + inbound[3:] for inbound in node]
                                  for node in layer["inbound_nodes"]]
        kept.append(layer)
    config["layers"] = kept
    config["output_layers"] = [source(output) for output in config["output_layers"]]
    return keras.Model.from_config(config)


def coefficients(cfg: Mapping) -> tuple[float, float]:
    return float(cfg.get("alpha", 1.0)), float(cfg.get("depth", 1.0))


def efficientnet_b0(input_shape, num_classes: int, cfg: Mapping) -> keras.Model:
    """EfficientNet-B0 (5,330,564 parameters at 224x224x3 with 1,000 classes: the application's 5,330,571 less
    its Normalization's 7 statistics), swish and squeeze-excite as published, BatchNorm at BN_MOMENTUM."""
    _check_size(input_shape, "efficientnet_b0")
    width, depth = coefficients(cfg)
    # keras.applications.EfficientNetB0 is this call at (1.0, 1.0); the base function takes other coefficients.
    backbone = rebuilt_for_training(EfficientNet(width, depth, default_size=224, model_name="efficientnetb0",
                                                 include_top=False, weights=None, input_shape=tuple(input_shape)))
    return keras.Model(backbone.input, classifier_head(backbone.output, num_classes), name="efficientnet_b0")


def efficientnet_lite0(input_shape, num_classes: int, cfg: Mapping) -> keras.Model:
    """EfficientNet-Lite0: 4,694,024 parameters (4,652,008 trainable; published: 4.7 M) at 224x224x3 with 1,000
    classes. Lite keeps the stem (32) and head (1280) widths and the first stage's single block unscaled."""
    _check_size(input_shape, "efficientnet_lite0")
    width, depth = coefficients(cfg)

    def conv_bn(x, filters, kernel, name, strides=1, activate=True):
        if strides == 2:   # pad as keras.applications does, then a 'valid' convolution
            x = layers.ZeroPadding2D(_correct_pad(x, kernel), name=f"{name}_pad")(x)
        if filters is None:
            x = layers.DepthwiseConv2D(kernel, strides=strides, padding="valid" if strides == 2 else "same",
                                       use_bias=False, depthwise_initializer=CONV_KERNEL_INITIALIZER,
                                       name=name)(x)
        else:
            x = layers.Conv2D(filters, kernel, strides=strides, padding="valid" if strides == 2 else "same",
                              use_bias=False, kernel_initializer=CONV_KERNEL_INITIALIZER, name=name)(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu6")(x) if activate else x

    inputs = layers.Input(shape=tuple(input_shape))
    x = conv_bn(inputs, 32, 3, "stem_conv", strides=2)
    repeats = [args["repeats"] if stage == 0 else int(math.ceil(depth * args["repeats"]))
               for stage, args in enumerate(DEFAULT_BLOCKS_ARGS)]
    blocks, index = sum(repeats), 0
    for stage, (args, count) in enumerate(zip(DEFAULT_BLOCKS_ARGS, repeats), start=1):
        for repeat in range(count):
            name = f"block{stage}{chr(ord('a') + repeat)}"
            filters_in = int(x.shape[-1])
            filters_out = divisible(args["filters_out"] * width)
            strides = args["strides"] if repeat == 0 else 1
            block_input = x
            if args["expand_ratio"] != 1:
                x = conv_bn(x, filters_in * args["expand_ratio"], 1, f"{name}_expand_conv")
            x = conv_bn(x, None, args["kernel_size"], f"{name}_dwconv", strides=strides)
            x = conv_bn(x, filters_out, 1, f"{name}_project_conv", activate=False)
            if strides == 1 and filters_in == filters_out:
                rate = DROP_CONNECT * index / blocks
                if rate > 0:
                    x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
                x = layers.Add(name=f"{name}_add")([x, block_input])
            index += 1
    x = conv_bn(x, 1280, 1, "top_conv")
    return keras.Model(inputs, classifier_head(x, num_classes), name="efficientnet_lite0")


def _correct_pad(x, kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """keras.applications' padding before a stride-2 'valid' convolution (one less on the top and left side
    for an even input), so the Lite and B0 stems see the same pixels."""
    height, width = x.shape[1:3]
    adjust = (1 - height % 2, 1 - width % 2)
    half = kernel // 2
    return (half - adjust[0], half), (half - adjust[1], half)
