"""Atomic outputs: a file is either the old one or the complete new one, never half, and others can read it."""

import os
import stat

import pytest

from compresslab.outputs import atomic_path, write_bytes, write_json


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "out" / "model.tflite"
    write_bytes(target, b"first")
    write_bytes(target, b"second version")
    assert target.read_bytes() == b"second version"
    with pytest.raises(TypeError):
        write_bytes(target, "not bytes")  # fails mid-write
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as partial:
        partial.write_bytes(b"half")
        raise KeyboardInterrupt  # Ctrl-C while writing
    assert target.read_bytes() == b"second version"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.tflite"]


def test_outputs_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "metrics.json", {"a": 1})
        write_bytes(tmp_path / "model.tflite", b"TFL3")
    finally:
        os.umask(old)
    for name in ("metrics.json", "model.tflite"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
