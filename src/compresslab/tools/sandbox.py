"""A throwaway copy of the project as a fresh git repository, where the real `dvc` commands can run without
touching the user's workspace: used by the end-to-end tests and `make benchmark`."""

import shutil
import subprocess
from pathlib import Path

# Results and history of the source workspace stay behind: the copy produces its own. So does the detection
# sample's .dvc file: a copy that never writes that sample would hold a DVC output with no data and no cache,
# which `dvc checkout` refuses (a copy that wants it writes the sample and `dvc add`s it).
LEFT_BEHIND = ("tests/", "dvc.lock", "analysis/dvc.lock", "reports/", "data_detection.dvc")


def copy_project(source: Path, dest: Path) -> Path:
    """Copy what git tracks in `source` (and new files it does not ignore) into `dest`."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=source, capture_output=True,
                            text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        if (source / name).is_file() and not name.startswith(LEFT_BEHIND):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
    return dest


def init_git(root: Path) -> None:
    """Make `root` a git repository with a local identity (DVC experiments need commits)."""
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "sandbox@compresslab.invalid"],
                 ["config", "user.name", "compresslab sandbox"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def commit_all(root: Path, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-q", "-m", message], cwd=root, check=True, capture_output=True)
