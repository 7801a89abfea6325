"""Reading what users give: files, JSON, TOML and YAML, with bounded work whatever they hold.

Files dlgraph loads are untrusted (DESIGN.md, "Bad input"), so their parsing is bounded here,
once: containers nested more than `MAX_DEPTH` deep are refused (Python's parsers recurse, and
so does code that walks what they return), as are numbers too long for Python to read (more
than 4,300 digits), YAML aliases that would expand a document beyond `MAX_YAML_VALUES` values
or refer to themselves, and a key repeated in one object or mapping (which the parsers would
silently resolve in favour of the last). Each parser raises its own library's error class, so
callers keep one ``except`` per format.

`excerpt` is the one way an error message quotes a value: a short, one-line excerpt built
without walking the whole value (a YAML alias bomb is a small object that expands into a huge
one, and quoting it in full costs gigabytes).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

MAX_DEPTH = 32
"""Containers (lists, objects, tables) nested deeper than this are refused."""
MAX_YAML_VALUES = 100_000
"""The most values a YAML document may hold once its aliases are expanded."""
EXCERPT_CHARS = 60
"""The longest excerpt of a value an error message quotes."""
_EXCERPT_ITEMS = 4


class UnreadableFile(ValueError):
    """A file that cannot be read as text; the message says why, not where (callers do)."""


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    """The UTF-8 text of the file at `path`; UnreadableFile says what is wrong with it (a
    missing file, a folder, a NUL byte in the path, bytes that are not UTF-8), naming the
    file as `what` it is ("config file", "network file")."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnreadableFile(f"no such {what}") from None
    except IsADirectoryError:
        raise UnreadableFile(f"is a folder, not a {what}") from None
    except NotADirectoryError:
        raise UnreadableFile(f"no such {what} (a folder on its path is a file)") from None
    except PermissionError:
        raise UnreadableFile(f"permission denied: cannot read this {what}") from None
    except UnicodeDecodeError as error:
        raise UnreadableFile(f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise UnreadableFile(f"cannot read this {what}: {error.strerror}") from None
    except ValueError:  # Python refuses a path holding a NUL byte before asking the system
        raise UnreadableFile("the path holds a NUL byte") from None


def nesting_exceeds(data: object, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and dicts in `data` nest more than `limit` deep (walked without
    recursion, each container once per path: only for data parsed from text)."""
    stack: list[tuple[object, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        children: Iterable[object]
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _too_deep() -> str:
    return f"containers nested more than {MAX_DEPTH} levels deep"


def _long_number(text: str) -> re.Match[str] | None:
    return re.search(rf"\d{{{sys.get_int_max_str_digits() + 1},}}", text)


def _too_long() -> str:
    return f"a number of more than {sys.get_int_max_str_digits():,} digits"


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _deep_json_position(text: str) -> int:
    """Where JSON `text` first opens a container deeper than MAX_DEPTH (strings skipped)."""
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                return match.start()
        elif token in ("]", "}"):
            depth -= 1
    return 0


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {excerpt(key)}")
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def _second_key_position(text: str, key: str) -> int:
    """Where `key` appears as an object key for the second time (0 if it cannot be told)."""
    places = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
    return places[1] if len(places) > 1 else 0


def parse_json(text: str) -> Any:
    """`json.loads`, bounded: json.JSONDecodeError (with the line and column) also for
    nesting deeper than MAX_DEPTH, a number too long to read, or a key repeated in an object."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError(_too_deep(), text, _deep_json_position(text)) from None
    except _DuplicateKey as error:
        raise json.JSONDecodeError(
            str(error), text, _second_key_position(text, error.key)
        ) from None
    except ValueError as error:
        long_number = _long_number(text)
        if long_number is not None:
            raise json.JSONDecodeError(_too_long(), text, long_number.start()) from None
        raise json.JSONDecodeError(excerpt(str(error)), text, 0) from None
    if nesting_exceeds(data):
        raise json.JSONDecodeError(_too_deep(), text, _deep_json_position(text))
    return data


def parse_toml(text: str) -> dict[str, Any]:
    """`tomllib.loads`, bounded: tomllib.TOMLDecodeError also for nesting deeper than
    MAX_DEPTH or a number too long to read."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise
    except RecursionError:
        raise tomllib.TOMLDecodeError(_too_deep()) from None
    except ValueError as error:
        reason = _too_long() if _long_number(text) else excerpt(str(error))
        raise tomllib.TOMLDecodeError(reason) from None
    if nesting_exceeds(data):
        raise tomllib.TOMLDecodeError(_too_deep())
    return data


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load`, bounded: yaml.YAMLError also for nesting deeper than MAX_DEPTH,
    aliases that expand beyond MAX_YAML_VALUES values or refer to themselves, a key repeated
    in a mapping, or a value it cannot read (a number too long, a date that is none).
    ImportError without PyYAML."""
    import yaml

    loader = _bounded_loader()
    try:
        _check_yaml_nesting(text, loader)
        return yaml.load(text, Loader=loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise yaml.YAMLError(f"{error.problem or error.context}{where}") from None
    except yaml.YAMLError:
        raise
    except ValueError as error:
        reason = _too_long() if _long_number(text) else excerpt(str(error))
        raise yaml.YAMLError(f"a value it cannot read: {reason}") from None


def _check_yaml_nesting(text: str, loader: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH while reading the first events, before the
    parser goes deeper: PyYAML's scanner slows down with every level of nesting, and its
    composer recurses."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise yaml.YAMLError(
                    f"{_too_deep()} (line {mark.line + 1}, column {mark.column + 1})"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _bounded_loader() -> Any:
    """PyYAML's safe loader, checking the composed document before building any value."""
    import yaml

    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        def construct_document(self, node: Any) -> Any:
            _check_yaml_nodes(node)
            return super().construct_document(node)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[tuple[str, str]] = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if (key.tag, key.value) in seen:
                        raise yaml.YAMLError(f"duplicate key {excerpt(key.value)} ({_where(key)})")
                    seen.add((key.tag, key.value))
            return super().construct_mapping(node, deep=deep)

    return Loader


def _yaml_children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _where(node: Any) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _check_yaml_nodes(root: Any) -> None:
    """Refuse a composed YAML document whose aliases refer to themselves, nest more than
    MAX_DEPTH deep, or expand to more than MAX_YAML_VALUES values. Aliases are shared nodes,
    so each node is visited once and its expanded size computed from its children's."""
    import yaml

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            children = _yaml_children(node)
            open_nodes.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in children)
            depth[key] = 1 + max((depth[id(child)] for child in children), default=0)
            problem = (
                _too_deep()
                if depth[key] > MAX_DEPTH + 1
                else f"aliases that expand to more than {MAX_YAML_VALUES:,} values"
                if size[key] > MAX_YAML_VALUES
                else None
            )
            if problem is not None:
                raise yaml.YAMLError(f"{problem} ({_where(node)})")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise yaml.YAMLError(f"an alias that refers to itself ({_where(node)})")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _yaml_children(node))


def excerpt(value: object, *, from_end: bool = False, quoted: bool = True) -> str:
    """A short, one-line excerpt of `value` for an error message: at most EXCERPT_CHARS
    characters of a string (its last ones with `from_end`, as for a path; without quotes
    when not `quoted`, as for the message of another error), the first few items of a
    container, two levels deep."""
    if from_end and isinstance(value, str) and len(value) > EXCERPT_CHARS:
        return "..." + repr(value[-EXCERPT_CHARS:])
    if not quoted and isinstance(value, str):
        text = value if len(value) <= 2 * EXCERPT_CHARS else value[: 2 * EXCERPT_CHARS] + "..."
        return text.replace("\n", " ").replace("\r", " ")
    text = _shown(value, 2)
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    limit = 2 * EXCERPT_CHARS
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value: object, levels: int) -> str:
    if isinstance(value, str):
        shown = repr(value[:EXCERPT_CHARS])
        return shown if len(value) <= EXCERPT_CHARS else f"{shown[:-1]}...{shown[-1]}"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of {_digits(value)} digits>"
    if isinstance(value, dict | list | tuple | set | frozenset):
        return _container(value, levels)
    if isinstance(value, bool | int | float | None):
        return repr(value)
    return repr(value)[: 2 * EXCERPT_CHARS]


def _digits(value: int) -> str:
    """How many digits `value` has: exactly below Python's limit on converting integers to
    text (4,300 digits), else about."""
    if value.bit_length() < 14_000:
        return f"{len(str(abs(value))):,}"
    return f"about {int((value.bit_length() - 1) * 0.30103) + 1:,}"


def _container(
    value: dict[Any, Any] | list[Any] | tuple[Any, ...] | set[Any] | frozenset[Any], levels: int
) -> str:
    opening, closing = {list: ("[", "]"), tuple: ("(", ")")}.get(type(value), ("{", "}"))
    if levels <= 0:
        return f"{opening}...{closing}" if value else f"{opening}{closing}"
    if isinstance(value, dict):
        parts = [
            f"{_shown(key, levels - 1)}: {_shown(item, levels - 1)}"
            for key, item in islice(value.items(), _EXCERPT_ITEMS)
        ]
    else:
        parts = [_shown(item, levels - 1) for item in islice(value, _EXCERPT_ITEMS)]
    if len(value) > _EXCERPT_ITEMS:
        parts.append(f"... ({len(value):,} items)")
    return opening + ", ".join(parts) + closing
