"""The field rules every config schema is built from (`settings` for params.yaml's groups, `detection.schema`
for a detector's model keys): each rule is a check and the one-line message that names the key and the fix.

    alpha: Annotated[int | float | None, rule((nullable(positive), "{key} must be above 0, got {value!r}"))]
"""

from collections.abc import Callable
from typing import Annotated

from pydantic import BeforeValidator


class Refused(ValueError):
    """A value the schema refuses. A field rule's message names the key as {key} and the value as {value}."""

    def __init__(self, message: str, value=None, *, templated: bool = False):
        super().__init__(message)
        self.message, self.value, self.templated = message, value, templated

    def text(self, key: str) -> str:
        return self.message.format(key=key, value=self.value) if self.templated else self.message


def is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true is an int to Python


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def rule(*checks: tuple[Callable[[object], bool], str]) -> BeforeValidator:
    """A field's declared check: each (accepts, message) in turn; the first refusal is that message."""
    def validate(value):
        for accepts, message in checks:
            if not accepts(value):
                raise Refused(message, value, templated=True)
        return value
    return BeforeValidator(validate)


def nullable(accepts: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or accepts(value)


def whole_from(least: int) -> Callable[[object], bool]:
    return lambda value: is_whole(value) and value >= least


def fraction(value) -> bool:
    return is_number(value) and 0 <= value < 1


def positive(value) -> bool:
    return is_number(value) and value > 0


def flag(value) -> bool:
    return isinstance(value, bool)


POSITIVE = (positive, "{key} must be a positive number, got {value!r}: set it to a value above 0")
TRUE_OR_FALSE = "{key} must be true or false, got {value!r}"
Epochs = Annotated[int, rule(POSITIVE, (is_whole, "{key} must be a whole number of epochs, got {value!r}: "
                                                  "write it without a point"))]
LearningRate = Annotated[int | float, rule(POSITIVE)]
Flag = Annotated[bool, rule((flag, TRUE_OR_FALSE))]
Layers = str | list[str]
PRUNE_FRACTION = (nullable(fraction), "{key} must be a fraction in [0, 1), got {value!r}: "
                                      "set it to e.g. 0.5 for half the weights zeroed")
Step = Annotated[int | None, rule((nullable(whole_from(0)), "{key} must be a whole number of training steps >= "
                                   "0, got {value!r}: fix it, or leave it null to derive it from the fine-tuning "
                                   "length"))]


def one_of(choices, what: str) -> BeforeValidator:
    return rule((lambda value: value in choices, f"{{key}}={{value!r}} is not {what}: use one of {', '.join(choices)}"))


def whole_runs(least: int) -> BeforeValidator:
    return rule((whole_from(least), f"{{key}} must be a whole number ({least} or more), got {{value!r}}"))
