"""Writing every output (models, flatbuffers, JSON, CSV, PNG) atomically, so that a stage killed at any moment
(Ctrl-C, out of memory) never leaves a half-written file that a later run would take as good.

`atomic_path` hands out a temporary name beside the target; only a complete, flushed file is renamed over
it, and the temporary file is removed on any failure. Files get ordinary permissions (0666 less the umask,
as any other program's output), so a shared machine or DVC cache can read them.
"""

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on success it is synced and renamed to `path`.

    Example:
      with atomic_path("models/baseline.keras") as partial:
          model.save(partial, save_format="h5")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        yield partial
        with open(partial, "rb+") as handle:  # the data must be on disk before the name points at it
            os.fsync(handle.fileno())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as partial:
        partial.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_text(text)


def write_json(path: str | Path, data: Mapping) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_history(path: str | Path, history: Mapping[str, list[float]]) -> None:
    """Per-epoch history as CSV with an `epoch` column (1-based): the format `dvc plots` reads."""
    keys = list(history)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for epoch in range(len(history[keys[0]]) if keys else 0):
        writer.writerow([epoch + 1, *(f"{history[k][epoch]:.6g}" for k in keys)])
    write_text(path, buffer.getvalue())
