"""One seed for Python, NumPy and TensorFlow, and deterministic TensorFlow ops, so reruns repeat."""

import tensorflow as tf
import tf_keras as keras


def seed_everything(seed: int) -> None:
    """Seed every random source a stage uses and ask TensorFlow for deterministic kernels."""
    keras.utils.set_random_seed(int(seed))  # seeds `random`, NumPy and TensorFlow together
    tf.config.experimental.enable_op_determinism()
