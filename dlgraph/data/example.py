"""One labelled example, and its parsing from JSON lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from dlgraph._validate import text
from dlgraph.errors import DataError


def json_object(where: str, text: str) -> dict[str, Any]:
    """One JSON object from one line; errors name `where` (path:line)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON: {error.msg}") from error
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object")
    return record


@attrs.frozen
class Example:
    """An input and its gold target (the output node's expected answer)."""

    input: str = attrs.field(validator=text)
    target: str = attrs.field(validator=text)
    source: str | None = attrs.field(default=None, kw_only=True, eq=False, repr=False)
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
                raise DataError(f"{where}: missing field {field!r}")
            if not isinstance(record[field], str | int | float):
                raise DataError(f"{where}: field {field!r} must be text")
        return cls(str(record["input"]), str(record["target"]), source=where)


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
