"""compresslab: compress Keras image classifiers for edge devices and measure what each step costs.

This package is the one place that prepares the TensorFlow environment: TFMOT 0.8.1 only accepts Keras 2
(`tf_keras`) models, and TensorFlow picks its Keras flavour when it is first imported. Every entry point
(stage scripts, the CLI, tests) imports `compresslab` before TensorFlow, so setting the variables here,
at package import, covers them all.
"""

import importlib.abc
import importlib.machinery
import os
import signal
import sys
import threading

os.environ["TF_USE_LEGACY_KERAS"] = "1"


class Keras3Blocker(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `import keras` (Keras 3, installed because TensorFlow requires it) fail in this process.

    Nothing here runs Keras 3, but two libraries import it only to probe for it and carry on when the import
    fails: TFMOT's prune registry (looking for a Keras 2 class that Keras 3 does not have) and the TFLite
    converter (asking whether the model is a Keras 3 one). Each probe loads all of Keras 3 with scikit-learn
    and matplotlib, about 0.9 s of every stage's start-up; refused, both take the path they take anyway, and
    the models and files are the same bytes. The package can still be found (TensorFlow reads its location
    at import), only not loaded.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            spec.loader = self
        return spec

    def create_module(self, spec):
        raise ModuleNotFoundError("compresslab runs Keras 2 (tf_keras) only: Keras 3 cannot be imported in a "
                                  "process that imported compresslab", name=spec.name)

    def exec_module(self, module):  # never reached: create_module refuses
        raise AssertionError(module)


if "keras" not in sys.modules and not any(isinstance(f, Keras3Blocker) for f in sys.meta_path):
    sys.meta_path.insert(0, Keras3Blocker())

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) drowns the stage output on CPU machines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Ctrl-C must stop every stage, from its first import on (TensorFlow's alone take seconds). A process that
# starts with SIGINT ignored keeps it ignored, and shells start commands so when they run them in the
# background without job control (CI runners, `dvc repro &` in a script): a stage would then train on
# through Ctrl-C. `errors.run_main` turns the interrupt into exit code 130.
if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

__version__ = "0.1.0"
