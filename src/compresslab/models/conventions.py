"""Rules the MobileNet-style architectures here (MobileNetV2, the EfficientNets, the detectors) build by:
BatchNorm's momentum and MobileNet's channel rounding. ResNet-8 keeps Keras' default momentum (0.99).
"""

# BatchNorm's moving statistics, which validation and every converted file use, move 10 % towards each batch's.
# Keras' 0.999 (MobileNetV2) and 0.99 (EfficientNet) suit ImageNet's hundreds of thousands of steps. Trained from
# scratch for a few hundred steps here, the statistics stayed near their initial values: the validation loss
# never fell while the training loss did, and early stopping kept a chance-level model (a detector in ssd_study
# at 22 steps an epoch; MobileNetV2 and EfficientNet-B0 in efficientnet_study at 55, 92-99 % training and 10 %
# validation accuracy after 5 epochs). tests/test_models.py trains each family 128 steps: 52-53 % in inference
# mode with Keras' momenta, 99-100 % with this one.
BN_MOMENTUM = 0.9


def divisible(value: float, divisor: int = 8) -> int:
    """Channels rounded to a multiple of `divisor`, never more than 10 % below `value` (MobileNet's rule, which
    EfficientNet shares)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded
