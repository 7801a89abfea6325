"""Run configuration files (TOML, or YAML when PyYAML is installed) for the `dlgraph` command.

Every error names the file and the key: ``run.toml: [train] unknown key 'stepz'``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import attrs

from dlgraph._untrusted import UnreadableFile, excerpt, parse_toml, parse_yaml, read_text
from dlgraph._validate import check_path
from dlgraph.backend import Backend, BackendRegistry, connect
from dlgraph.data import Task, generated_task, load_task, read_jsonl
from dlgraph.data.generated import GENERATORS
from dlgraph.engine import Budget, Engine
from dlgraph.engine.shared import open_shared_limit
from dlgraph.errors import ConfigError, DlgraphError
from dlgraph.network import Network
from dlgraph.nodes import INPUT
from dlgraph.train.options import TrainerOptions
from dlgraph.train.run import Schedule as RunSettings

SECTIONS = ("backend", "engine", "backward", "data", "network", "train", "output")
ENGINE_KEYS = ("rpm", "tpm", "max_concurrency", "cache", "max_calls", "max_tokens", "shared_limit")


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
            f"{shown}: unknown section {_bracketed(path[0])} (known: {', '.join(SECTIONS)})"
        )
    try:
        value = parse_toml(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return path, value


def _apply(raw: dict[str, Any], settings: Sequence[str], path: Path) -> dict[str, Any]:
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


def _bracketed(key: object) -> str:
    """A section's name as a config writes it, ``[train]``, or an excerpt of what it is."""
    shown = excerpt(key)
    return f"[{shown[1:-1]}]" if isinstance(key, str) else shown


def _read(path: Path) -> dict[str, Any]:
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
        """A file or folder path (text without a NUL byte)."""
        value: str | None = self.get(key, str, default)
        if value is not None:
            try:
                check_path(key, value)
            except ValueError as error:
                raise ConfigError(f"{self.path}: [{self.name}] {error}") from None
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


@attrs.frozen(kw_only=True)
class EngineConfig:
    """A backend and the engine around it, as one or two sections of a config describe them."""

    path: Path
    backend: str
    backend_options: dict[str, Any]
    engine_options: dict[str, Any]
    backend_section: str
    engine_section: str

    def build(self) -> Engine:
        """The engine, built (not entered: no call is made); a bad name, option or limit is a
        ConfigError naming the section and key."""
        return self._engine(connect_backend=True)

    def check(self) -> None:
        """Every check `build` makes that needs no backend or shared limit made: the names
        are installed plugins, the engine options and limits are valid."""
        self._engine(connect_backend=False)

    def _engine(self, connect_backend: bool) -> Engine:
        options = dict(self.engine_options)
        try:
            budget = Budget(options.pop("max_calls", None), options.pop("max_tokens", None))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{self.path}: [{self.engine_section}] {error}") from error
        try:
            if connect_backend:
                backend = connect(self.backend, **self.backend_options)
            else:
                BackendRegistry.from_entry_points().factory(self.backend)
                backend = Backend()
        except (TypeError, ValueError, DlgraphError) as error:
            raise ConfigError(f"{self.path}: [{self.backend_section}] {error}") from error
        shared = options.pop("shared_limit", None)
        try:
            if shared is None:
                return Engine(backend, budget=budget, **options)
            if not isinstance(shared, str):
                raise TypeError(f"shared_limit: expected a plugin name, got {excerpt(shared)}")
            unopened = open_shared_limit(shared, backend.identity, open=False)
            engine = Engine(backend, budget=budget, shared_limit=unopened, **options)
            if connect_backend:  # every check passed before joining the shared limit
                engine.shared_limit = open_shared_limit(shared, backend.identity)
            return engine
        except (TypeError, ValueError, DlgraphError) as error:
            raise ConfigError(f"{self.path}: [{self.engine_section}] {error}") from error


@attrs.frozen(kw_only=True)
class RunConfig:
    path: Path
    forward: EngineConfig
    backward: EngineConfig | None
    """The engine that writes proposals and posterior samples, when not the forward one."""
    data: Section
    network: Section
    options: TrainerOptions
    run: RunSettings
    output_dir: Path

    @classmethod
    def read(cls, path: str | os.PathLike[str], settings: Sequence[str] = ()) -> RunConfig:
        """The file, with `settings` (``section.key=value``) put in place before any check."""
        path = Path(path)
        raw = _apply(_read(path), settings, path)
        for key in raw:
            if key not in SECTIONS:
                raise ConfigError(
                    f"{path}: unknown section {_bracketed(key)} (known: {', '.join(SECTIONS)})"
                )
        section = {name: Section(path, name, raw.get(name, {}) or {}) for name in SECTIONS}
        for name, table in section.items():
            if not isinstance(table.values, Mapping):
                raise ConfigError(f"{path}: [{name}] must be a table")
        backend = section["backend"]
        backend.check_keys(("name", "options"))
        engine = section["engine"]
        engine.check_keys(ENGINE_KEYS)
        backward = section["backward"]
        backward.check_keys(("name", "options", *ENGINE_KEYS))
        train = section["train"]
        option_keys = tuple(f.name for f in attrs.fields(TrainerOptions))
        run_keys = tuple(f.name for f in attrs.fields(RunSettings))
        train.check_keys(run_keys + option_keys)
        try:
            options = TrainerOptions(**{k: v for k, v in train.values.items() if k in option_keys})
            run = RunSettings(
                **(
                    {"steps": 3, "batch_size": 10}
                    | {k: v for k, v in train.values.items() if k in run_keys}
                )
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{path}: [train] {error}") from error
        section["output"].check_keys(("dir",))
        base = path.parent
        return cls(
            path=path,
            forward=EngineConfig(
                path=path,
                backend=backend.get("name", str, required=True),
                backend_options=dict(backend.get("options", dict, {})),
                engine_options=dict(engine.values),
                backend_section="backend",
                engine_section="engine",
            ),
            backward=None
            if not backward.values
            else EngineConfig(
                path=path,
                backend=backward.get("name", str, required=True),
                backend_options=dict(backward.get("options", dict, {})),
                engine_options={k: v for k, v in backward.values.items() if k in ENGINE_KEYS},
                backend_section="backward",
                engine_section="backward",
            ),
            data=section["data"],
            network=section["network"],
            options=options,
            run=run,
            output_dir=base / str(section["output"].file_path("dir", f"runs/{path.stem}")),
        )

    def task(self) -> Task:
        """The data: a generated task, a task of the DLN paper, or JSONL files."""
        data = self.data
        data.check_keys(
            ("source", "task", "train", "dev", "test", "seed", "path", "classes", "instruction")
        )
        source = data.get("source", str, "generated")
        if source not in ("generated", "paper", "jsonl"):
            raise ConfigError(
                f"{data.where('source')}: expected generated, paper or jsonl, got {excerpt(source)}"
            )
        splits = ("train", "dev", "test")
        try:
            if source == "generated":
                name = data.get("task", str, required=True)
                if name not in GENERATORS:
                    raise ConfigError(
                        f"{data.where('task')}: unknown generated task {excerpt(name)} (known: {', '.join(GENERATORS)})"
                    )
                counts = {split: data.count(split, 100) for split in splits}
                return generated_task(name, seed=data.get("seed", int, 0), **counts)
            if source == "paper":
                limits = {split: data.count(split, None) for split in splits}
                task = load_task(data.get("task", str, required=True), data.file_path("path"))
                return attrs.evolve(
                    task, **{k: getattr(task, k)[:n] for k, n in limits.items() if n is not None}
                )
            if source == "jsonl":
                paths = {split: data.file_path(split) for split in splits}
                files = {k: self.path.parent / v for k, v in paths.items() if v is not None}
                splits_read = {k: read_jsonl(p) for k, p in files.items()}
                return Task(
                    "jsonl",
                    splits_read.get("train", []),
                    splits_read.get("dev", []),
                    splits_read.get("test", []),
                    data.get("classes", list),
                    data.get("instruction", str, "Answer the question."),
                )
        except ConfigError:
            raise
        except DlgraphError as error:
            raise ConfigError(f"{self.path}: [data] {error}") from error
        raise AssertionError(f"unhandled data source {source!r}")

    def engine(self) -> Engine:
        return self.forward.build()

    def backward_engine(self) -> Engine | None:
        return None if self.backward is None else self.backward.build()

    def build_network(self, task: Task) -> Network:
        """`kind = "dln1"` or `"dln2"` from the task, or explicit nodes and edges."""
        section = self.network
        section.check_keys(
            ("kind", "nodes", "edges", "hidden_prompt", "hidden_max_tokens", "calibrate")
        )
        kind = section.get("kind", str, "dln1")
        net = Network()
        try:
            if "nodes" in section.values:
                for index, node in enumerate(section.get("nodes", list)):
                    if not isinstance(node, Mapping) or "name" not in node:
                        raise ConfigError(
                            f"{section.where(f'nodes[{index}]')}: expected a table with a name"
                        )
                    net.add_node(**{k: v for k, v in node.items()})
                for index, edge in enumerate(section.get("edges", list, [])):
                    if not (isinstance(edge, list) and len(edge) == 2):
                        raise ConfigError(
                            f"{section.where(f'edges[{index}]')}: expected [source, target]"
                        )
                    net.add_edge(*edge)
            elif kind in ("dln1", "dln2"):
                if kind == "dln2":
                    net.add_node(
                        "reason",
                        prompt=section.get(
                            "hidden_prompt", str, "Think about the question step by step."
                        ),
                        max_tokens=section.get("hidden_max_tokens", int, 48),
                        stop=["\n\n"],
                    )
                    net.add_edge(INPUT, "reason")
                net.add_node(
                    "answer",
                    prompt=task.instruction,
                    classes=task.classes,
                    calibrate=section.get("calibrate", bool, False),
                )
                net.add_edge(INPUT, "answer")  # the input first: candidates share it as a prefix
                if kind == "dln2":
                    net.add_edge("reason", "answer")
            else:
                raise ConfigError(
                    f"{section.where('kind')}: expected dln1 or dln2, got {excerpt(kind)}"
                )
            net.validate()
        except TypeError as error:
            raise ConfigError(f"{self.path}: [network] {error}") from error
        except ConfigError:
            raise
        except DlgraphError as error:
            raise ConfigError(f"{self.path}: [network] {error}") from error
        return net
