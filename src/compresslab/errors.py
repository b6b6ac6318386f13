"""User-facing errors: one line that names the problem and the fix, a non-zero exit, no traceback."""

import os
import sys
from typing import Callable


class UserError(Exception):
    """A problem with the user's data or configuration, reported as a single line."""


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # what a shell reports for a command stopped by Ctrl-C (128 + SIGINT)


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
    if skip_teardown:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)
