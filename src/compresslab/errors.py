"""User-facing errors: one line that names the problem and the fix, a non-zero exit, no traceback."""

import sys
from typing import Callable


class UserError(Exception):
    """A problem with the user's data or configuration, reported as a single line."""


EXIT_USER_ERROR = 2


def run_main(main: Callable[[], object]) -> None:
    """Run a stage or CLI entry point, turning a UserError into one line on stderr and exit code 2."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
