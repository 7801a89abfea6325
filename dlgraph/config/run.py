"""A whole run configuration file (TOML, or YAML when PyYAML is installed) for the `dlgraph`
command: its engines, data, network, training settings and output folder.

Every error names the file and the key: ``run.toml: [train] unknown key 'stepz'``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from dlgraph._untrusted import excerpt
from dlgraph.config.engines import ENGINE_KEYS, EngineConfig
from dlgraph.config.files import SECTIONS, Section, apply_settings, bracketed, read_tables
from dlgraph.config.presets import network_from
from dlgraph.config.tasks import task_from
from dlgraph.data import Task
from dlgraph.engine import Engine
from dlgraph.errors import ConfigError, MetricError
from dlgraph.metrics import Metric, resolve_metric
from dlgraph.network import Network
from dlgraph.train.options import TrainerOptions
from dlgraph.train.run import Schedule


@attrs.frozen(kw_only=True)
class RunConfig:
    path: Path
    forward: EngineConfig
    backward: EngineConfig | None
    """The engine that writes proposals and posterior samples, when not the forward one."""
    data: Section
    network: Section
    options: TrainerOptions
    schedule: Schedule
    metric: Metric
    """Decides which network is kept and what the run reports: ``[train] metric``, the name
    of a built-in or an installed plugin's metric (never an importable path)."""
    output_dir: Path

    @classmethod
    def read(cls, path: str | os.PathLike[str], settings: Sequence[str] = ()) -> RunConfig:
        """The file, with `settings` (``section.key=value``) put in place before any check."""
        path = Path(path)
        raw = apply_settings(read_tables(path), settings, path)
        for key in raw:
            if key not in SECTIONS:
                raise ConfigError(
                    f"{path}: unknown section {bracketed(key)} (known: {', '.join(SECTIONS)})"
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
        schedule_keys = tuple(f.name for f in attrs.fields(Schedule))
        train.check_keys((*schedule_keys, *option_keys, "metric"))
        try:
            metric = resolve_metric(train.get("metric", str, "exact"))
        except MetricError as error:
            raise ConfigError(f"{train.where('metric')}: {error}") from None
        try:
            options = TrainerOptions(**{k: v for k, v in train.values.items() if k in option_keys})
            schedule = Schedule(
                **(
                    {"steps": 3, "batch_size": 10}
                    | {k: v for k, v in train.values.items() if k in schedule_keys}
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
            schedule=schedule,
            metric=metric,
            output_dir=base / str(section["output"].file_path("dir", f"runs/{path.stem}")),
        )

    def check(self) -> None:
        """Every check that needs no backend connected nor shared limit joined: the data and
        the network it describes, the engines' plugin names, options and limits."""
        self.build_network(self.training_task())
        for engine in (self.forward, self.backward):
            if engine is not None:
                engine.check()

    def task(self) -> Task:
        """The data: a generated task, a task of the DLN paper, or JSONL files."""
        return task_from(self.data)

    def training_task(self) -> Task:
        """The data of a training run, which learns on train and chooses on dev."""
        task = self.task()
        for split in ("train", "dev"):
            if not getattr(task, split):
                raise ConfigError(f"{self.data.where(split)}: no examples (training needs some)")
        return task

    def engine(self) -> Engine:
        return self.forward.build()

    def backward_engine(self) -> Engine | None:
        return None if self.backward is None else self.backward.build()

    def build_network(self, task: Task) -> Network:
        """`kind = "dln1"` or `"dln2"` from the task, or explicit nodes and edges; the nodes
        ``[train] trainable`` names must be among them."""
        net = network_from(self.network, task)
        for name in self.options.trainable or ():
            if name not in net.nodes:
                raise ConfigError(
                    f"{self.path}: [train] trainable: unknown node {excerpt(name)} (nodes: "
                    f"{', '.join(net.nodes)})"
                )
        return net
