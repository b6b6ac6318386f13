"""Writing stage outputs (metrics JSON, history CSV) so that a killed stage never leaves a half file."""

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path


def write_text_atomically(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def write_json(path: str | Path, data: Mapping) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_history(path: str | Path, history: Mapping[str, list[float]]) -> None:
    """Per-epoch history as CSV with an `epoch` column (1-based): the format `dvc plots` reads."""
    keys = list(history)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for epoch in range(len(history[keys[0]]) if keys else 0):
        writer.writerow([epoch + 1, *(f"{history[k][epoch]:.6g}" for k in keys)])
    write_text_atomically(path, buffer.getvalue())
