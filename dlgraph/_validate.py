"""Value checks shared by every record that takes options from code or from files.

Strict on purpose: ``"false"`` where a bool belongs, ``4.0`` or ``True`` where an integer
belongs, or a bare string where a list of strings belongs is refused rather than coerced, so a
value loaded from a file means exactly what the Python API would have meant. Each check raises
TypeError or ValueError naming the field; callers add where (node, file, section).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from dlgraph._untrusted import excerpt

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]

MAX_TOKENS = 1_000_000
"""The most tokens a call may ask a model to write: more than any model writes in one answer."""


def check_int(
    name: str, value: object, minimum: int | None = None, maximum: int | None = None
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected int, got {excerpt(value)}")
    if minimum is not None and value < minimum:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {excerpt(value)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum:,}, got {excerpt(value)}")
    return value


def check_number(
    name: str,
    value: object,
    minimum: float | None = None,
    *,
    above: bool = False,
    finite: bool = True,
) -> float:
    """A real number, at least `minimum` (or strictly above it with `above`); infinity only
    where `finite` is False (a log-likelihood may be -inf, a rate or a temperature may not),
    NaN never."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected float, got {excerpt(value)}")
    if value != value:  # NaN compares unequal to itself and passes every bound
        raise ValueError(f"{name}: expected a number, got NaN")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the largest float
        raise ValueError(f"{name}: expected a number, got {excerpt(value)} (too large)") from None
    if finite and math.isinf(number):
        raise ValueError(f"{name}: expected a finite number, got {number}")
    if minimum is not None and (value <= minimum if above else value < minimum):
        raise ValueError(f"{name} must be {'>' if above else '>='} {minimum:g}, got {number:g}")
    return number


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected bool (true or false), got {excerpt(value)}")
    return value


def check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected str, got {excerpt(value)}")
    return value


def check_path(name: str, value: object) -> str | os.PathLike[str]:
    """A file or folder path: text or a path object, without a NUL byte (which no system
    takes; Python would raise only when the path is first used, maybe after paid calls)."""
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name}: expected a path, got {excerpt(value)}")
    if "\0" in os.fspath(value):
        raise ValueError(
            f"{name}: a path may not hold a NUL byte, got {excerpt(os.fspath(value), from_end=True)}"
        )
    return value


def strings(values: Iterable[str], name: str = "value") -> tuple[str, ...]:
    """A list of strings as a tuple; a bare string is refused, not split into letters, and so
    are a mapping (its keys are no list) and a set (it has no order)."""
    if isinstance(values, str | bytes):
        raise TypeError(f"{name}: expected a list of strings, got the string {excerpt(values)}")
    if isinstance(values, Mapping | set | frozenset):
        given = "a mapping" if isinstance(values, Mapping) else "a set, which has no order"
        raise TypeError(f"{name}: expected a list of strings, got {given}: {excerpt(values)}")
    try:
        items = tuple(values)
    except TypeError:
        raise TypeError(f"{name}: expected a list of strings, got {excerpt(values)}") from None
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name}: expected a list of strings, got an item {excerpt(item)}")
    return items


def stop_strings(values: Iterable[str]) -> tuple[str, ...]:
    """A converter for stop sequences; an empty one would end every answer before it began."""
    stops = strings(values, "stop")
    if "" in stops:
        raise ValueError(f"stop[{stops.index('')}]: an empty stop string would end every answer")
    return stops


def class_strings(values: Iterable[str]) -> tuple[str, ...]:
    """A converter for class specs."""
    return strings(values, "classes")


def integer(
    minimum: int | None = None, maximum: int | None = None, *, none: bool = True
) -> Validator:
    """An attrs validator: an integer (never a bool) from `minimum` to `maximum`; None
    passes unless `none` is False."""

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None or not none:
            check_int(attribute.name, value, minimum, maximum)

    return validate


def number(minimum: float | None = None, *, above: bool = False, none: bool = True) -> Validator:
    """An attrs validator: a finite real number of at least (or above) `minimum`; None
    passes unless `none` is False."""

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None or not none:
            check_number(attribute.name, value, minimum, above=above)

    return validate


def check_instance(name: str, value: object, record: type, described: str) -> None:
    """An instance of `record` (a class such as dg.Budget), named as `described` when not."""
    if not isinstance(value, record):
        raise TypeError(f"{name}: expected {described}, got {excerpt(value)}")


def instance_of(record: type, described: str) -> Validator:
    """An attrs validator: `check_instance`."""

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        check_instance(attribute.name, value, record, described)

    return validate


def file_path(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An attrs validator: a file or folder path (`check_path`), or None."""
    if value is not None:
        check_path(attribute.name, value)


def function(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An attrs validator: something to call."""
    if not callable(value):
        raise TypeError(f"{attribute.name}: expected a function, got {excerpt(value)}")


def boolean(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_bool(attribute.name, value)


def text(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_text(attribute.name, value)
