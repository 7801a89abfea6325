"""Reading a run configuration file: its tables, ``--set`` settings put in place, and
sections whose keys are read with errors that name the file and the key."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import attrs

from dlgraph._untrusted import UnreadableFile, excerpt, parse_toml, parse_yaml, read_text
from dlgraph._validate import check_path
from dlgraph.errors import ConfigError

SECTIONS = ("backend", "engine", "backward", "data", "network", "train", "output")


def parse_setting(setting: str) -> tuple[tuple[str, ...], Any]:
    """``section.key=value`` (``--set``, a sweep's ``--grid``): the key path and the value, read
    as a TOML value when it is one (``3``, ``0.5``, ``true``, ``"text"``, ``[1, 2]``), else
    as the text itself. A setting is one line: a line break in it could add keys the
    setting does not name."""
    shown = excerpt(setting)
    if any(character in setting for character in "\n\r\0"):
        raise ConfigError(f"{shown}: a setting is one line (it holds a line break or NUL)")
    name, equals, text = setting.partition("=")
    path = tuple(name.strip().split("."))
    if not equals or len(path) < 2 or not all(path):
        raise ConfigError(f"{shown}: expected section.key=value, such as train.steps=5")
    if path[0] not in SECTIONS:
        raise ConfigError(
            f"{shown}: unknown section {bracketed(path[0])} (known: {', '.join(SECTIONS)})"
        )
    try:
        value = parse_toml(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return path, value


def apply_settings(raw: dict[str, Any], settings: Sequence[str], path: Path) -> dict[str, Any]:
    """The file's tables with each setting put in place (later settings win)."""
    for setting in settings:
        keys, value = parse_setting(setting)
        table = raw
        for depth, key in enumerate(keys[:-1]):
            inner = table.setdefault(key, {})
            if not isinstance(inner, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"{path}: {excerpt(setting)}: {where} is not a table")
            table = inner
        table[keys[-1]] = value
    return raw


def bracketed(key: object) -> str:
    """A section's name as a config writes it, ``[train]``, or an excerpt of what it is."""
    shown = excerpt(key)
    return f"[{shown[1:-1]}]" if isinstance(key, str) else shown


def read_tables(path: Path) -> dict[str, Any]:
    """The file's tables, parsed with bounded work (`dlgraph._untrusted`)."""
    try:
        text = read_text(path, "config file")
    except UnreadableFile as error:
        raise ConfigError(f"{path}: {error}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml)") from None
        try:
            data = parse_yaml(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
    else:
        try:
            data = parse_toml(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of sections ({', '.join(SECTIONS)})")
    return data


@attrs.frozen
class Section:
    """One table of a config file, reading keys with errors that name file and key."""

    path: Path
    name: str
    values: Mapping[str, Any]

    def where(self, key: str) -> str:
        return f"{self.path}: [{self.name}] {key}"

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False
    ) -> Any:
        if key not in self.values:
            if required:
                raise ConfigError(f"{self.path}: [{self.name}] missing key {excerpt(key)}")
            return default
        value = self.values[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            names = "/".join(k.__name__ for k in _kinds(kind))
            raise ConfigError(f"{self.where(key)}: expected {names}, got {excerpt(value)}")
        return value

    def file_path(self, key: str, default: str | None = None) -> str | None:
        """A file or folder path (text without a NUL byte). An empty one is refused: it
        would name the config's own folder, or no file at all."""
        value: str | None = self.get(key, str, default)
        if value is not None:
            try:
                check_path(key, value)
            except ValueError as error:
                raise ConfigError(f"{self.path}: [{self.name}] {error}") from None
            if not value.strip():
                raise ConfigError(f"{self.where(key)}: an empty path")
        return value

    @overload
    def count(self, key: str, default: int) -> int: ...
    @overload
    def count(self, key: str, default: None) -> int | None: ...

    def count(self, key: str, default: int | None) -> int | None:
        """A number of examples: an integer of at least 0."""
        value: int | None = self.get(key, int, default)
        if value is not None and value < 0:
            raise ConfigError(f"{self.where(key)}: must be >= 0, got {value}")
        return value

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for key in self.values:
            if key not in allowed:
                raise ConfigError(
                    f"{self.path}: [{self.name}] unknown key {excerpt(key)} (known: {', '.join(allowed)})"
                )


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
