"""compresslab: compress Keras image classifiers for edge devices and measure what each step costs.

This package is the one place that prepares the TensorFlow environment: TFMOT 0.8.1 only accepts Keras 2
(`tf_keras`) models, and TensorFlow picks its Keras flavour when it is first imported. Every entry point
(stage scripts, the CLI, tests) imports `compresslab` before TensorFlow, so setting the variables here,
at package import, covers them all.
"""

import os
import signal
import threading

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) drowns the stage output on CPU machines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Ctrl-C must stop every stage, from its first import on (TensorFlow's alone take seconds). A process that
# starts with SIGINT ignored keeps it ignored, and shells start commands so when they run them in the
# background without job control (CI runners, `dvc repro &` in a script): a stage would then train on
# through Ctrl-C. `errors.run_main` turns the interrupt into exit code 130.
if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

__version__ = "0.1.0"
