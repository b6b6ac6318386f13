"""What the report tells a reader about speed: why int8 is not faster, and which file is."""

from compresslab.reporting.scoring import latency_notes


def row(variant, mode, ratio, outside="", partitions=1):
    return {"variant": variant, "mode": mode, "latency_ratio_t1": ratio, "operators_outside_xnnpack": outside,
            "xnnpack_partitions": partitions}


def test_slow_int8_files_are_explained_once_with_the_fastest_file():
    rows = [row("baseline", "float32", 1.0), row("baseline", "dynamic", 0.4),
            row("baseline", "int8", 1.08, "AVERAGE_POOL_2D x3, SOFTMAX", 5),
            row("pruned", "int8", 1.18, "AVERAGE_POOL_2D x3, SOFTMAX", 5)]
    (note,) = latency_notes(rows, 1)
    assert note.startswith("2 int8 file(s) run at 1.08-1.18x")
    assert "AVERAGE_POOL_2D x3, SOFTMAX" in note and "5 partitions" in note
    assert note.endswith("The fastest file here is baseline-dynamic at 0.40x.")


def test_fast_or_fully_delegated_int8_needs_no_explanation():
    assert latency_notes([row("baseline", "float32", 1.0), row("baseline", "int8", 0.45, "SOFTMAX", 2)], 1) == []
    assert latency_notes([row("baseline", "float32", 1.0), row("baseline", "int8", 1.1)], 1) == []
