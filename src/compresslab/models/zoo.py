"""The model zoo: flat tf_keras classifiers sized from the data (input shape, number of classes).

Every model is a flat functional/sequential model without Rescaling layers: TFMOT's default QAT scheme
rejects nested models and Rescaling, so pixels are normalised in the data pipeline instead. The EfficientNets
are built in models/efficientnet.py; every classifier can start from a weights file (models/pretrained.py).
"""

from collections.abc import Callable, Mapping

import numpy as np
import tf_keras as keras

from compresslab.errors import UserError
from compresslab.models import efficientnet
from compresslab.models.conventions import BN_MOMENTUM, divisible

layers = keras.layers


def firenet(input_shape, num_classes: int, cfg: Mapping) -> keras.Model:
    """FireNet from the fire-detection reports: 646,818 parameters at 64x64x3 with 2 classes."""
    model = keras.Sequential(name="firenet")
    model.add(layers.Input(shape=input_shape))
    for filters in (16, 32, 64):
        model.add(layers.Conv2D(filters, 3, activation="relu"))
        model.add(layers.AveragePooling2D(2))
        model.add(layers.Dropout(0.5))
    model.add(layers.Flatten())
    model.add(layers.Dense(256, activation="relu"))
    model.add(layers.Dropout(0.2))
    model.add(layers.Dense(128, activation="relu"))
    model.add(layers.Dense(num_classes, activation="softmax"))
    return model


def mlp(input_shape, num_classes: int, cfg: Mapping) -> keras.Model:
    """The MNIST report's multilayer perceptron: Flatten, Dense 80, Dense 60, Dropout 0.2, Dense classes."""
    model = keras.Sequential(name="mlp")
    model.add(layers.Input(shape=input_shape))
    model.add(layers.Flatten())
    for units in cfg.get("hidden_units", (80, 60)):
        model.add(layers.Dense(int(units), activation="relu"))
    model.add(layers.Dropout(cfg.get("dropout", 0.2)))
    model.add(layers.Dense(num_classes, activation="softmax"))
    return model


def resnet8(input_shape, num_classes: int, cfg: Mapping) -> keras.Model:
    """MLPerf Tiny's image-classification reference ResNet-8 (78,666 parameters at 32x32x3, 10 classes)."""
    regularizer = keras.regularizers.l2(1e-4)

    def conv(x, filters, kernel=3, strides=1):
        return layers.Conv2D(filters, kernel, strides=strides, padding="same", kernel_initializer="he_normal",
                             kernel_regularizer=regularizer)(x)

    inputs = layers.Input(shape=input_shape)
    x = layers.Activation("relu")(layers.BatchNormalization()(conv(inputs, 16)))
    for filters, strides in ((16, 1), (32, 2), (64, 2)):
        y = layers.Activation("relu")(layers.BatchNormalization()(conv(x, filters, strides=strides)))
        y = layers.BatchNormalization()(conv(y, filters))
        if strides != 1:  # the shortcut must match the downsampled, widened branch
            x = conv(x, filters, kernel=1, strides=strides)
        x = layers.Activation("relu")(layers.Add()([x, y]))
    x = layers.AveragePooling2D(pool_size=int(min(x.shape[1:3])))(x)
    outputs = layers.Dense(num_classes, activation="softmax")(layers.Flatten()(x))
    return keras.Model(inputs, outputs, name="resnet8")


# MobileNetV2's inverted residual blocks: (output filters before alpha, stride, expansion), as in the paper
# and in keras.applications.MobileNetV2.
MOBILENETV2_BLOCKS = ((16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6), (64, 2, 6),
                      (64, 1, 6), (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6), (96, 1, 6), (160, 2, 6),
                      (160, 1, 6), (160, 1, 6), (320, 1, 6))


def mobilenetv2(input_shape, num_classes: int, cfg: Mapping) -> keras.Model:
    """MobileNetV2 with width multiplier `alpha`, trained from scratch (no download): the same layers and
    parameter count as keras.applications.MobileNetV2, built so that XNNPACK's sparse inference (and TFMOT's
    PruneForLatencyOnXNNPack policy) accepts it: every stride-2 3x3 convolution is a ZeroPadding2D of 1 on
    each side then a 'valid' convolution (Keras pads asymmetrically), and global average pooling keeps its
    spatial dimensions before the classifier. Its 1x1 convolutions are what `prune.layers=xnnpack` prunes.
    """
    if min(input_shape[:2]) < 32:
        raise UserError(f"data.image_size={input_shape[0]} is too small for mobilenetv2: use 32 or more")
    alpha = float(cfg.get("alpha", 0.35))

    def batch_norm_relu6(x, activate=True):
        x = layers.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM)(x)
        return layers.ReLU(6.0)(x) if activate else x

    inputs = layers.Input(shape=tuple(input_shape))
    x = layers.ZeroPadding2D(1)(inputs)
    x = batch_norm_relu6(layers.Conv2D(divisible(32 * alpha), 3, strides=2, padding="valid", use_bias=False)(x))
    for block, (filters, stride, expansion) in enumerate(MOBILENETV2_BLOCKS):
        block_input, channels = x, int(x.shape[-1])
        if block:
            x = batch_norm_relu6(layers.Conv2D(expansion * channels, 1, use_bias=False)(x))
        if stride == 2:
            x = layers.ZeroPadding2D(1)(x)
        x = batch_norm_relu6(layers.DepthwiseConv2D(3, strides=stride, padding="same" if stride == 1 else "valid",
                                                    use_bias=False)(x))
        out_channels = divisible(filters * alpha)
        x = batch_norm_relu6(layers.Conv2D(out_channels, 1, use_bias=False)(x), activate=False)
        if stride == 1 and channels == out_channels:
            x = layers.Add()([block_input, x])
    x = batch_norm_relu6(layers.Conv2D(divisible(1280 * alpha) if alpha > 1.0 else 1280, 1, use_bias=False)(x))
    x = layers.Flatten()(layers.GlobalAveragePooling2D(keepdims=True)(x))
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=f"mobilenetv2_{alpha:g}")


BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "firenet": firenet, "mlp": mlp, "resnet8": resnet8, "mobilenetv2": mobilenetv2,
    "efficientnet_b0": efficientnet.efficientnet_b0, "efficientnet_lite0": efficientnet.efficientnet_lite0}


def builders(task: str) -> dict[str, Callable[..., keras.Model]]:
    """The models of a task (data.task): classifiers here, detectors in models/detectors.py."""
    if task == "detection":
        from compresslab.models import detectors  # noqa: PLC0415  (detection only)

        return dict(detectors.DETECTORS)
    return BUILDERS


def build_model(cfg: Mapping, input_shape, num_classes: int, task: str = "classification") -> keras.Model:
    """Build the model that `cfg.name` names for this input shape and class count.

    Raises UserError for an unknown name, a model of the other task, or an input too small for the architecture.
    """
    name = cfg["name"]
    known = builders(task)
    if name not in known:
        other = "detection" if task == "classification" else "classification"
        if name in builders(other):
            raise UserError(f"model={name} is a {other} model but data.task={task}: pick one of "
                            f"{'|'.join(known)}, or data for {other}")
        raise UserError(f"unknown model {name!r}: use model={'|'.join(known)}")
    try:
        return known[name](tuple(input_shape), int(num_classes), cfg)
    except ValueError:  # TensorFlow's shape error: a layer's output would have a non-positive size
        raise UserError(f"data.image_size={input_shape[0]} is too small for model {name!r}: a layer's "
                        f"output would be empty; raise data.image_size") from None


def count_parameters(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.weights))
