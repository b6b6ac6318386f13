"""Figures as the report and `compare` print them: a dash for what was not measured, fixed decimals so columns
line up."""

from compresslab.results.record import as_number

KB = 1024.0
DASH = "—"


def fmt(value, pattern: str, scale: float = 1.0) -> str:
    number = as_number(value)
    return DASH if number is None else pattern.format(number * scale)


def ms(value) -> str:
    """A latency with 3 significant digits but fixed decimals per magnitude, so a column lines up."""
    number = as_number(value)
    if number is None:
        return DASH
    decimals = 0 if abs(number) >= 100 else 1 if abs(number) >= 10 else 2
    return f"{number:.{decimals}f}"


def count(value) -> str:
    """A large count in k/M/G (3 significant digits) so the MACs column stays narrow."""
    number = as_number(value)
    if number is None:
        return DASH
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= factor:
            return f"{number / factor:.3g}{suffix}"
    return f"{number:.0f}"


def one_line(text) -> str:
    """Free text (an error, a note) on one line, so it stays one markdown bullet."""
    return " ".join(str(text).split())
