"""compresslab: compress Keras image classifiers for edge devices and measure what each step costs.

This package is the one place that prepares the TensorFlow environment: TFMOT 0.8.1 only accepts Keras 2
(`tf_keras`) models, and TensorFlow picks its Keras flavour when it is first imported. Every entry point
(stage scripts, the CLI, tests) imports `compresslab` before TensorFlow, so setting the variables here,
at package import, covers them all.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) drowns the stage output on CPU machines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
