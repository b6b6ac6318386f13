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


if "keras" in sys.modules:
    # Too late: TensorFlow already resolved `tf.keras` to Keras 3, which TFMOT cannot wrap. Fail in one line
    # rather than train with the wrong Keras.
    print("error: Keras 3 was imported before compresslab: import compresslab first (before tensorflow's "
          "tf.keras or keras), so that TensorFlow uses tf_keras", file=sys.stderr)
    raise SystemExit(2)
if not any(isinstance(f, Keras3Blocker) for f in sys.meta_path):
    sys.meta_path.insert(0, Keras3Blocker())


# Lines TensorFlow's C++ side writes straight to stderr (fd 2), at every start-up whatever TF_CPP_MIN_LOG_LEVEL says
# (absl logs everything before absl::InitializeLog, which TF 2.21 never calls): on a machine without a GPU, 16
# stages a pipeline each print them, and `failed call to cuInit` reads like a failure.
STARTUP_NOISE = ("All log messages before absl::InitializeLog", "oneDNN custom operations are on",
                 "Could not find cuda drivers", "failed call to cuInit", "Unable to register cu",
                 "This TensorFlow binary is optimized to use available CPU instructions",
                 "To enable the following instructions:", "TF-TRT Warning")
# ... and one at run time, once a process, an ERROR line only TF_CPP_MIN_LOG_LEVEL=3 (every error) would hide:
# `E0000 ... util.cc:131] oneDNN supports DT_INT32 only on platforms with AVX-512. Falling back to the default
# Eigen-based implementation if present.` TensorFlow's oneDNN graph rewrite prints it for the first int32
# Transpose (or ConjugateTranspose) in a graph, the only ops with an int32 oneDNN kernel, because TF 2.21 reports
# DT_INT32 unsupported on every CPU, AVX-512 or not; that op then runs its ordinary Eigen kernel, as always.
RUNTIME_NOISE = ("only on platforms with AVX-512. Falling back to the default Eigen-based implementation",)


class QuietTensorflowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports TensorFlow with the process's stderr filtered from then on (`quiet_stderr`): every line but the
    STARTUP_NOISE and RUNTIME_NOISE ones gets through, a real error, a traceback, a child process's output."""

    def __init__(self):
        self.inner = None

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self.inner is not None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            self.inner, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        from compresslab import quiet_stderr  # noqa: PLC0415

        quiet_stderr.install(STARTUP_NOISE + RUNTIME_NOISE)
        self.inner.exec_module(module)


# The user's own TF_CPP_MIN_LOG_LEVEL wins, and with it every line TensorFlow prints. The marker tells ours, which
# the processes we start (dvc, its stages) inherit, from theirs.
if "TF_CPP_MIN_LOG_LEVEL" not in os.environ or os.environ.get("COMPRESSLAB_QUIET_TF") == "1":
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    os.environ["COMPRESSLAB_QUIET_TF"] = "1"
    if "tensorflow" not in sys.modules and not any(isinstance(f, QuietTensorflowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorflowImport())

# Ctrl-C must stop every stage, from its first import on (TensorFlow's alone take seconds). A process that
# starts with SIGINT ignored keeps it ignored, and shells start commands so when they run them in the
# background without job control (CI runners, `dvc repro &` in a script): a stage would then train on
# through Ctrl-C. `errors.run_main` turns the interrupt into exit code 130.
if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

__version__ = "0.1.0"
