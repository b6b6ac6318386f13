"""User-facing errors: one line that names the problem and the fix, a non-zero exit, no traceback."""

import os
import sys
from pathlib import Path
from typing import Callable


class UserError(Exception):
    """A problem with the user's data or configuration, reported as a single line."""


EXIT_USER_ERROR = 2
EXIT_LIBRARY_ERROR = 1
EXIT_INTERRUPTED = 130  # what a shell reports for a command stopped by Ctrl-C (128 + SIGINT)
# Libraries whose errors, escaping a stage, are told in one line (the full traceback on request).
LIBRARIES = {"tensorflow": "TensorFlow", "tf_keras": "Keras", "tensorflow_model_optimization": "TFMOT",
             "ai_edge_litert": "LiteRT", "keras": "Keras"}
TRACEBACK_VARIABLE = "COMPRESSLAB_TRACEBACK"


def library_error_line(err: BaseException, where: str) -> str | None:
    """One line for an exception raised inside one of LIBRARIES, naming where it escaped; None otherwise."""
    frame = err.__traceback__
    library = None
    while frame is not None:
        module = frame.tb_frame.f_globals.get("__name__", "")
        library = LIBRARIES.get(module.split(".")[0], library)
        frame = frame.tb_next
    if library is None:
        return None
    message = " ".join(str(err).split()) or "no message"
    message = message if len(message) <= 300 else message[:300] + " ..."
    return (f"{where}: {library} failed ({type(err).__name__}: {message}): a setting reached a limit of {library} "
            f"that compresslab does not check yet; please report it, and set {TRACEBACK_VARIABLE}=1 for the "
            "traceback")


def run_main(main: Callable[[], object], *, skip_teardown: bool = False) -> None:
    """Run a stage or CLI entry point: a UserError becomes one line on stderr and exit code 2, Ctrl-C exit 130.

    Ctrl-C stops it wherever it is (see `compresslab/__init__.py` for SIGINT inherited as ignored); outputs
    are written atomically, so stopping anywhere leaves no half file behind.

    Args:
      main: the entry point.
      skip_teardown: exit without Python's interpreter teardown once `main` is done. For stage scripts:
        every output is written and synced by then, and tearing TensorFlow down takes 0.7 s of each of the
        16 TensorFlow stages of a pipeline run. Never for code that runs inside another program (tests).
    """
    code = 0
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: nothing was recorded as done; run it again to redo this step", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except Exception as err:  # a library's error that no check caught: one line, not a page of traceback
        line = None if os.environ.get(TRACEBACK_VARIABLE) == "1" else library_error_line(err, _entry_point())
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        code = EXIT_LIBRARY_ERROR
    if skip_teardown:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)


def _entry_point() -> str:
    """'stage pcqat' for stages/pcqat.py, else the command's name."""
    script = Path(sys.argv[0] if sys.argv and sys.argv[0] else "compresslab")
    return f"stage {script.stem}" if script.resolve().parent.name == "stages" else script.stem
