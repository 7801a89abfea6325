"""One labelled example, and its parsing from JSON lines."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from dlgraph._untrusted import excerpt, parse_json
from dlgraph._validate import text
from dlgraph.errors import DataError


def json_object(where: str, text: str) -> dict[str, Any]:
    """One JSON object from one line; errors name `where` (path:line)."""
    try:
        record = parse_json(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON: {error.msg}") from error
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object")
    return record


def _target(value: object) -> str | dict[str, str]:
    """A converter: one target, or one per output node ``{"answer": "yes", "topic": "sport"}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            if not isinstance(key, str) or not isinstance(item, str):
                raise TypeError(
                    f"target: expected text for each output, got {excerpt(key)}: {excerpt(item)}"
                )
            if not key:
                raise ValueError(f"target: an output's name is empty (its answer {excerpt(item)})")
        return dict(value)
    raise TypeError(f"target: expected text or an object of texts by output, got {excerpt(value)}")


@attrs.frozen
class Example:
    """An input and its gold target: the output node's expected answer, or for a network with
    several output nodes a mapping from each output's name to its answer."""

    input: str = attrs.field(validator=text)
    target: str | dict[str, str] = attrs.field(converter=_target)
    source: str | None = attrs.field(
        default=None, kw_only=True, eq=False, repr=False, validator=attrs.validators.optional(text)
    )
    """Where the example was read (``train.jsonl:17``), so that errors can say so."""

    def where(self, fallback: str) -> str:
        return self.source or fallback

    @classmethod
    def from_jsonl(cls, path: str, line_number: int, text: str) -> Example:
        """Parse one line of ``{"input": ..., "target": ...}``; errors name path:line."""
        where = f"{path}:{line_number}"
        record = json_object(where, text)
        for field in ("input", "target"):
            if field not in record:
                raise DataError(f"{where}: missing field {excerpt(field)}")
        if not isinstance(record["input"], str | int | float):
            raise DataError(f"{where}: field 'input' must be text")
        target = record["target"]
        if isinstance(target, dict):
            if not target or not all(isinstance(v, str | int | float) for v in target.values()):
                raise DataError(f"{where}: field 'target' must be text, or an object of texts")
            target = {str(k): str(v) for k, v in target.items()}
        elif isinstance(target, str | int | float):
            target = str(target)
        else:
            raise DataError(f"{where}: field 'target' must be text, or an object of texts")
        try:
            return cls(str(record["input"]), target, source=where)
        except (TypeError, ValueError) as error:  # the checks of Example itself
            raise DataError(f"{where}: {error}") from None


def check_dataset(examples: Sequence[Example], name: str) -> list[Example]:
    """Refuse an empty dataset or one of the wrong type, naming it."""
    if isinstance(examples, str | bytes):
        raise DataError(f"{name}: expected a list of dg.Example, got a string")
    data = list(examples)
    if not data:
        raise DataError(f"{name}: empty dataset")
    for index, example in enumerate(data):
        if not isinstance(example, Example):
            raise DataError(f"{name}[{index}]: expected dg.Example, got {type(example).__name__}")
    return data
