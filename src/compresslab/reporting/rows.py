"""Which result rows are shown, and in which order: the report's tables, its plots and `compare` all list files
the same way, so a reader finds a file at the same place everywhere."""

from collections.abc import Iterable, Mapping

from compresslab import variants

# Reading order of the study, as variants.py declares it; names not declared sort after, by name.
VARIANT_ORDER = variants.REPORT_ORDER


def sort_rows(rows: Iterable[Mapping]) -> list[Mapping]:
    """Rows by variant (VARIANT_ORDER, then others by name), then mode (variants.MODES, then others by name)."""
    def rank(name, order):
        return (order.index(name), "") if name in order else (len(order), str(name))
    return sorted(rows, key=lambda row: (rank(row["variant"], VARIANT_ORDER), rank(row["mode"], variants.MODES)))


def failed(row: Mapping) -> bool:
    """A row whose file could not be evaluated: listed as failed, never drawn or tabulated."""
    return bool(row.get("error"))


def drawable(rows: Iterable[Mapping]) -> list[Mapping]:
    """The rows that were evaluated (their figures may still be None one by one)."""
    return [row for row in rows if not failed(row)]
