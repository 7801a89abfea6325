"""Readers for the dataset formats of the DLN paper; every error names file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from dlgraph._untrusted import UnreadableFile, excerpt, parse_json, read_text
from dlgraph.data.example import Example, json_object
from dlgraph.errors import DataError


def _lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their numbers; a line that is not UTF-8 is named, not skipped."""
    if "\0" in os.fspath(path):
        raise DataError(f"{os.fspath(path)}: the path holds a NUL byte")
    try:
        with open(path, "rb") as stream:
            for number, raw in enumerate(stream, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(
                        f"{os.fspath(path)}:{number}: not UTF-8 text (byte {error.start})"
                    ) from None
                if line.strip():
                    yield number, line
    except FileNotFoundError:
        raise DataError(f"{os.fspath(path)}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{os.fspath(path)}: is a folder, not a data file") from None
    except NotADirectoryError:
        raise DataError(
            f"{os.fspath(path)}: no such file (a folder on its path is a file)"
        ) from None


def _records(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """JSON objects, one per non-blank line."""
    for number, line in _lines(path):
        yield number, json_object(f"{os.fspath(path)}:{number}", line)


def _field(
    path: str | os.PathLike[str], where: int | str, record: Mapping[str, Any], name: str
) -> str:
    if name not in record:
        raise DataError(f"{os.fspath(path)}:{where}: missing field {excerpt(name)}")
    return str(record[name])


def read_jsonl(path: str | os.PathLike[str]) -> list[Example]:
    """``{"input": ..., "target": ...}`` per line (other fields are ignored)."""
    return [Example.from_jsonl(os.fspath(path), number, line) for number, line in _lines(path)]


def load_json(path: str | os.PathLike[str]) -> Any:
    try:
        return parse_json(read_text(path, "data file"))
    except UnreadableFile as error:
        raise DataError(f"{os.fspath(path)}: {error}") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{os.fspath(path)}:{error.lineno}: not valid JSON: {error.msg}") from error


def read_bbh(path: str | os.PathLike[str]) -> list[Example]:
    """BIG-Bench Hard: ``{"examples": [{"input": ..., "target": ...}, ...]}``."""
    document = load_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("examples"), list):
        raise DataError(f"{os.fspath(path)}: expected an object with a list 'examples'")
    return [
        Example(
            _field(path, f"examples[{i}]", e, "input"), _field(path, f"examples[{i}]", e, "target")
        )
        for i, e in enumerate(document["examples"])
    ]


def _with_options(text: str, labels: Mapping[str, str]) -> str:
    return text + "\nOptions:\n- " + "\n- ".join(labels.values())


def _label(
    path: str | os.PathLike[str], where: int | str, raw: str, labels: Mapping[str, str]
) -> str:
    if raw not in labels:
        raise DataError(
            f"{os.fspath(path)}:{where}: label {excerpt(raw)} is not one of {', '.join(labels)}"
        )
    return labels[raw]


def read_ordered_prompt(path: str | os.PathLike[str], labels: Mapping[str, str]) -> list[Example]:
    """Ordered-Prompt JSONL: ``{"sentence", "label"}``; options are appended to the input."""
    return [
        Example(
            _with_options(_field(path, number, record, "sentence"), labels),
            _label(path, number, _field(path, number, record, "label"), labels),
        )
        for number, record in _records(path)
    ]


def read_leopard(
    path: str | os.PathLike[str], labels: Mapping[str, str], prefix: str
) -> list[Example]:
    """Leopard: a JSON list of ``{"sentence1", "label"}``; the prefix and options are added."""
    document = load_json(path)
    if not isinstance(document, list):
        raise DataError(f"{os.fspath(path)}: expected a JSON list of records")
    return [
        Example(
            _with_options(prefix + _field(path, f"[{i}]", record, "sentence1"), labels),
            _label(path, f"[{i}]", _field(path, f"[{i}]", record, "label"), labels),
        )
        for i, record in enumerate(document)
    ]
