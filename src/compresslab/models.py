"""The model zoo: flat tf_keras classifiers sized from the data (input shape, number of classes).

Every model is a flat functional/sequential model without Rescaling layers: TFMOT's default QAT scheme
rejects nested models and Rescaling, so pixels are normalised in the data pipeline instead.
"""

from collections.abc import Callable, Mapping

import numpy as np
import tf_keras as keras

from compresslab.errors import UserError

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


def mobilenetv2(input_shape, num_classes: int, cfg: Mapping) -> keras.Model:
    """Keras applications MobileNetV2 with width multiplier `alpha`, trained from scratch (no download)."""
    if min(input_shape[:2]) < 32:
        raise UserError(f"data.image_size={input_shape[0]} is too small for mobilenetv2: use 32 or more")
    return keras.applications.MobileNetV2(input_shape=tuple(input_shape), alpha=float(cfg.get("alpha", 0.35)),
                                          weights=None, classes=num_classes, include_top=True)


BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "firenet": firenet, "mlp": mlp, "resnet8": resnet8, "mobilenetv2": mobilenetv2}


def build_model(cfg: Mapping, input_shape, num_classes: int) -> keras.Model:
    """Build the model that `cfg.name` names for this input shape and class count.

    Raises UserError for an unknown name or an input too small for the architecture.
    """
    name = cfg["name"]
    if name not in BUILDERS:
        raise UserError(f"unknown model {name!r}: use model={'|'.join(BUILDERS)}")
    try:
        return BUILDERS[name](tuple(input_shape), int(num_classes), cfg)
    except ValueError:  # TensorFlow's shape error: a layer's output would have a non-positive size
        raise UserError(f"data.image_size={input_shape[0]} is too small for model {name!r}: a layer's "
                        f"output would be empty; raise data.image_size") from None


def count_parameters(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.weights))
