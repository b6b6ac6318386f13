"""A `dvc` command run by this Python (the one whose DVC the project pins), its failure one line."""

import subprocess
import sys

from compresslab.errors import UserError


def run_dvc(*args: str) -> subprocess.CompletedProcess:
    """Run `dvc ARGS...` and return what it printed; UserError with its last line if it fails."""
    result = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise UserError(f"`dvc {' '.join(args)}` failed: {last[0]}")
    return result
