"""Value checks shared by every record that takes options from code or from files.

Strict on purpose: ``"false"`` where a bool belongs, ``4.0`` or ``True`` where an integer
belongs, or a bare string where a list of strings belongs is refused rather than coerced, so a
value loaded from a file means exactly what the Python API would have meant. Each check raises
TypeError or ValueError naming the field; callers add where (node, file, section).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected int, got {value!r}")
    if minimum is not None and value < minimum:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_number(
    name: str, value: object, minimum: float | None = None, *, above: bool = False
) -> float:
    """A real number, at least `minimum` (or strictly above it with `above`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected float, got {value!r}")
    if value != value:  # NaN compares unequal to itself and passes every bound
        raise ValueError(f"{name}: expected a number, got NaN")
    if minimum is not None and (value <= minimum if above else value < minimum):
        raise ValueError(f"{name} must be {'>' if above else '>='} {minimum:g}, got {value}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected bool (true or false), got {value!r}")
    return value


def check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected str, got {value!r}")
    return value


def strings(values: Iterable[str], name: str = "value") -> tuple[str, ...]:
    """A list of strings as a tuple; a bare string is refused, not split into letters."""
    if isinstance(values, str | bytes):
        raise TypeError(f"{name}: expected a list of strings, got the string {values!r}")
    try:
        items = tuple(values)
    except TypeError:
        raise TypeError(f"{name}: expected a list of strings, got {values!r}") from None
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name}: expected a list of strings, got an item {item!r}")
    return items


def stop_strings(values: Iterable[str]) -> tuple[str, ...]:
    """A converter for stop sequences."""
    return strings(values, "stop")


def class_strings(values: Iterable[str]) -> tuple[str, ...]:
    """A converter for class specs."""
    return strings(values, "classes")


def integer(minimum: int | None = None) -> Validator:
    """An attrs validator: an integer (never a bool) of at least `minimum`; None passes."""

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            check_int(attribute.name, value, minimum)

    return validate


def number(minimum: float | None = None, *, above: bool = False) -> Validator:
    """An attrs validator: a real number of at least (or above) `minimum`; None passes."""

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            check_number(attribute.name, value, minimum, above=above)

    return validate


def boolean(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_bool(attribute.name, value)


def text(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_text(attribute.name, value)
