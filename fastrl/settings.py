"""How a setting is declared: once, with its default, help text, allowed values and check.

Every setting of `TrainConfig` is a dataclass field made by `setting()`. The CLI flag
(`--kebab-name`), its help text, the config-file key (the field name, `-` or `_`), the validation
and the error message all come from that one declaration, so adding a setting touches one place:
the section it belongs to (`fastrl.config.CommonSettings`, or an algorithm's own section in its
file). This module imports nothing from fastrl, so every other module may import it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], "str | None"]  # value -> what is wrong (after "--flag: "), or None


class ConfigError(ValueError):
    """A bad setting. The message starts with the flag it concerns and says what is allowed."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, check: Check | None = None) -> Any:
    """A dataclass field carrying its help text, its allowed values and its check."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "check": check})


def check_field(f: dataclasses.Field, value: Any) -> None:
    """Raise the one-line ConfigError for `value` of field `f`, if it is not allowed."""
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{flag(f.name)}: {value!r} is not one of {', '.join(choices)}")
    check = f.metadata.get("check")
    problem = check(value) if check is not None else None
    if problem:
        raise ConfigError(f"{flag(f.name)}: {problem}")
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes checks such as `not x < 0`
        raise ConfigError(f"{flag(f.name)}: must be a finite number, got {value}")


# --- checks: each returns what is wrong, in the words that follow "--flag: " ---

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any) -> str | None:
    return None if _is_int(value) and value > 0 else f"must be a positive integer, got {value!r}"


def non_negative_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 0 else f"must be an integer >= 0, got {value!r}"


def positive(value: Any) -> str | None:
    return None if value > 0 and math.isfinite(value) else f"must be a positive number, got {value}"


def non_negative(what: str = "") -> Check:
    """`value >= 0`; NaN is left to the finiteness check that follows every setting's own."""
    return lambda value: f"must be >= 0{what}, got {value}" if value < 0 else None


def in_range(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Check:
    """`low <= value <= high`, either end open; the message writes the interval as (low, high]."""
    text = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(value: Any) -> str | None:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return None if above and below else f"must be in {text}, got {value}"

    return check


def optional(check: Check) -> Check:
    """`check`, with None (\"use the default rule\") always allowed."""
    return lambda value: None if value is None else check(value)
