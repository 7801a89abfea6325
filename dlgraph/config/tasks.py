"""The data a config's ``[data]`` section names: a generated task, a task of the DLN paper,
or JSONL files."""

from __future__ import annotations

import attrs

from dlgraph._untrusted import excerpt
from dlgraph.config.files import Section
from dlgraph.data import Task, generated_task, load_task, read_jsonl
from dlgraph.data.generated import GENERATORS
from dlgraph.errors import ConfigError, DlgraphError

DATA_KEYS = ("source", "task", "train", "dev", "test", "seed", "path", "classes", "instruction")


def task_from(data: Section) -> Task:
    """The data: a generated task, a task of the DLN paper, or JSONL files (relative to the
    config file)."""
    data.check_keys(DATA_KEYS)
    source = data.get("source", str, "generated")
    if source not in ("generated", "paper", "jsonl"):
        raise ConfigError(
            f"{data.where('source')}: expected generated, paper or jsonl, got {excerpt(source)}"
        )
    for key, kind in (("task", str), ("seed", int), ("classes", list), ("instruction", str)):
        data.get(key, kind)  # checked whatever the source reads, as a --set may switch it
    data.file_path("path")
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
            files = {k: data.path.parent / v for k, v in paths.items() if v is not None}
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
        raise ConfigError(f"{data.path}: [data] {error}") from error
    raise AssertionError(f"unhandled data source {source!r}")
