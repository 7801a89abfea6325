"""A training run from a configuration, config in and result out: what ``dlgraph train`` does,
and what ``dlgraph sweep`` runs for each trial.

`train_run` checks everything it can before a call or a deleted file (`check_run`), claims
the run folder, evaluates before and after training, trains, saves the best network and
writes ``result.json`` last (its presence means the run finished). `RunResult` is the one
record of that file: written by the run, read back (checked field by field, since a file is
untrusted) by whoever collects results. Whoever starts a run follows it through `RunHooks`
(the command line draws progress bars; a sweep writes a log); the library prints nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeGuard

import attrs

from dlgraph._files import write_atomic
from dlgraph._untrusted import UnreadableFile, excerpt, parse_json, read_text
from dlgraph.config import RunConfig
from dlgraph.data import Example, Task
from dlgraph.engine import Engine, LedgerSnapshot
from dlgraph.errors import ConfigError
from dlgraph.evaluation import Score, evaluate
from dlgraph.metrics import Metric
from dlgraph.network import Network
from dlgraph.train import FitResult, StepRecord, VariationalTrainer
from dlgraph.train.folder import RunFolder

EVALUATION_CHUNK = 16
"""Examples per progress update when a run evaluates a split."""
SPLITS = ("dev", "test")
"""The splits a run evaluates before and after training, when the task has them."""


@attrs.frozen
class CheckedRun:
    """A run whose config, data, network and engine options passed every check."""

    task: Task
    net: Network
    engine: Engine
    backward: Engine | None

    def trainer(self, config: RunConfig) -> VariationalTrainer:
        return VariationalTrainer(self.net, self.engine, config.options, backward=self.backward)

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[None]:
        """Both engines entered (the backward one only when there is one)."""
        async with AsyncExitStack() as stack:
            for engine in (self.engine, self.backward):
                if engine is not None:
                    await stack.enter_async_context(engine)
            yield


def check_run(config: RunConfig) -> CheckedRun:
    """Everything that can be checked before a call or a deleted file: the config, the data
    (every target against the output nodes), the network, the backends and engine options.
    Raises ConfigError (or DataError, GraphError) naming what and where."""
    task = config.training_task()
    net = config.build_network(task)
    checked = CheckedRun(task, net, config.engine(), config.backward_engine())
    checked.trainer(config).check_data(task.train, task.dev)
    if task.test:
        net.targets(task.test, "test")
    return checked


def _ignore(value: object) -> None:
    return None


class RunHooks:
    """What a run tells whoever started it; here, nothing. Subclass to follow a run."""

    async def started(self, trainer: VariationalTrainer, task: Task) -> None:
        """The engines are open and no call is made yet (time to estimate, or to probe)."""

    @contextmanager
    def evaluating(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        """A split of `total` examples is evaluated; the function is told how many more are
        done after each chunk."""
        yield _ignore

    @contextmanager
    def training(self, steps: int) -> Iterator[Callable[[StepRecord], None]]:
        """Training starts; the function is told of every finished step."""
        yield _ignore


async def evaluate_in_chunks(
    net: Network,
    engine: Engine,
    data: Sequence[Example],
    label: str,
    hooks: RunHooks,
    metric: Metric | None = None,
) -> Score:
    """The metric on `data` (default: accuracy), evaluated in chunks so that `hooks` can
    follow."""
    with hooks.evaluating(label, len(data)) as advance:
        parts = []
        for start in range(0, len(data), EVALUATION_CHUNK):
            chunk = data[start : start + EVALUATION_CHUNK]
            parts.append(await evaluate(net, engine, chunk, metric=metric))
            advance(len(chunk))
    return Score.concatenate(parts)


async def _scores(
    net: Network, engine: Engine, task: Task, when: str, hooks: RunHooks, metric: Metric
) -> dict[str, float]:
    return {
        split: await evaluate_in_chunks(
            net, engine, getattr(task, split), f"{split} ({when})", hooks, metric
        )
        for split in SPLITS
        if getattr(task, split)
    }


BEFORE_MAX_BYTES = 64 * 1024
"""A before.json holds a few numbers: a larger file is not one a run wrote."""


@attrs.frozen
class _Measured:
    """What the scores before training are scores of: a network on a task's splits under a
    metric, by a model (the forward engine's backend and its options)."""

    net: Network
    task: Task
    metric: Metric
    model: Mapping[str, Any]

    def digest(self) -> str:
        measured = {
            "network": self.net.to_json(),
            "metric": self.metric.name,
            "model": self.model,
            **{split: [[e.input, e.target] for e in getattr(self.task, split)] for split in SPLITS},
        }
        text = json.dumps(measured, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def _model(config: RunConfig) -> dict[str, Any]:
    return {"backend": config.forward.backend, "options": config.forward.backend_options}


async def _before(
    folder: RunFolder, resume: bool, measured: _Measured, engine: Engine, hooks: RunHooks
) -> dict[str, float]:
    """The scores before training: measured once per run and kept in the folder, since a
    resumed run would score the same network on the same examples again."""
    if resume and folder.before.exists():
        return read_before(folder.before, measured)
    net, task, metric = measured.net, measured.task, measured.metric
    scores = await _scores(net, engine, task, "before", hooks, metric)
    document = {
        "metric": metric.name,
        "examples": _split_sizes(task),
        "digest": measured.digest(),
        "scores": scores,
    }
    write_atomic(folder.before, json.dumps(document, indent=2) + "\n")
    return scores


def read_before(path: Path, measured: _Measured) -> dict[str, float]:
    """A run folder's before.json, checked against the run resuming (a file is untrusted):
    ConfigError names the file and what does not fit, the metric, the splits' sizes, then
    the network, model and examples it was measured on (by their digest)."""
    try:
        if path.stat().st_size > BEFORE_MAX_BYTES:
            raise UnreadableFile(f"larger than {BEFORE_MAX_BYTES:,} bytes")
        data = parse_json(read_text(path, "before.json file"))
    except (OSError, UnreadableFile, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: {error}") from None
    sizes, metric = _split_sizes(measured.task), measured.metric
    try:
        if not isinstance(data, dict) or set(data) != {"metric", "examples", "digest", "scores"}:
            raise ValueError("expected an object of metric, examples, digest and scores")
        if not isinstance(data["metric"], str):
            raise ValueError(f"metric: expected a metric's name, got {excerpt(data['metric'])}")
        if data["metric"] != metric.name:
            raise ValueError(f"metric: {data['metric']!r}, where this run's is {metric.name!r}")
        counts = data["examples"]
        if (
            not isinstance(counts, dict)
            or counts != sizes
            or any(type(n) is not int for n in counts.values())
        ):
            raise ValueError(f"examples: {excerpt(counts)}, where this run's splits hold {sizes}")
        if data["digest"] != measured.digest():
            raise ValueError("measured on another network, model or other examples than this run's")
        scores = _scores_by_split(data, "scores", required=False)
        if set(scores) != set(sizes):
            raise ValueError(f"scores: {sorted(scores)}, where this run has {sorted(sizes)}")
    except ValueError as error:
        raise ConfigError(f"{path}: {error} (delete it to score the network again)") from None
    return scores


def _split_sizes(task: Task) -> dict[str, int]:
    return {split: len(getattr(task, split)) for split in SPLITS if getattr(task, split)}


@attrs.frozen
class TrainedRun:
    """What a finished run leaves: its result (as written), the trainer's own result, the
    engines' ledgers by name ("forward", "backward") and where the best network was saved."""

    result: RunResult
    fit: FitResult
    ledgers: Mapping[str, LedgerSnapshot]
    network: Path


async def train_run(
    config: RunConfig,
    *,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    hooks: RunHooks | None = None,
) -> TrainedRun:
    """Train the config's network into the folder `out` (default: the config's output
    folder), resuming from its checkpoint with `resume`; write ``network.json``, then
    ``result.json``. Raises a DlgraphError subclass naming what and where (ConfigError
    before anything is deleted or called), or BackendError when the model fails for good."""
    hooks = hooks or RunHooks()
    checked = check_run(config)
    task, net, engine = checked.task, checked.net, checked.engine
    folder = RunFolder.open(config.output_dir if out is None else Path(out), resume=resume)
    engine.journal = folder.journal("forward")
    if checked.backward is not None:
        checked.backward.journal = folder.journal("backward")
    started = time.monotonic()
    async with checked.opened():
        trainer = checked.trainer(config)
        await hooks.started(trainer, task)
        measured = _Measured(net, task, config.metric, _model(config))
        before = await _before(folder, resume, measured, engine, hooks)
        with hooks.training(config.schedule.steps) as follow:

            def on_step(record: StepRecord) -> None:
                folder.past_result()
                follow(record)

            fit = await trainer.fit(
                task.train,
                task.dev,
                config.schedule.steps,
                config.schedule.batch_size,
                eval_every=config.schedule.eval_every,
                patience=config.schedule.patience,
                checkpoint_dir=folder.checkpoint_dir,
                log_path=folder.steps,
                on_step=on_step,
                metric=config.metric,
            )
        after = await _scores(net, engine, task, "after", hooks, config.metric)
        ledgers = {"forward": engine.statistics()}
        if checked.backward is not None:
            ledgers["backward"] = checked.backward.statistics()
    net.save(folder.network)
    result = RunResult.measured(task, before, after, ledgers, time.monotonic() - started, fit)
    result.write(folder.result)
    return TrainedRun(result, fit, ledgers, folder.network)


COUNTERS = ("calls", "tokens", "cost", "steps")
"""The result's counts: whole numbers of at least 0, but the cost (a number)."""


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


@attrs.frozen(kw_only=True)
class RunResult:
    """What a finished training run measured: the record of its ``result.json``.

    Its counts are the whole run's: the engines' ledgers continue from their journals, which
    hold the calls of killed processes of the same run."""

    task: str
    metric: str = "exact"
    """What `before`, `after` and `best_dev` measure ("exact": accuracy)."""
    before: Mapping[str, float]
    """The metric's mean by split ("dev", "test") before training."""
    after: Mapping[str, float]
    best_dev: float | None
    steps: int
    stopped: str
    """Why training ended: "steps", "early_stopping" or "budget"."""
    calls: int
    tokens: int
    cost: float
    seconds: float
    by_model: Mapping[str, Mapping[str, float]]
    """Each engine's totals ("forward", "backward"), counter by counter (`dg.Usage`)."""

    @classmethod
    def measured(
        cls,
        task: Task,
        before: Mapping[str, float],
        after: Mapping[str, float],
        ledgers: Mapping[str, LedgerSnapshot],
        seconds: float,
        fit: FitResult,
    ) -> RunResult:
        totals = [ledger.total for ledger in ledgers.values()]
        best_dev = fit.best_dev_score
        return cls(  # plain floats: a Score (a float with its parts) does not pickle
            task=task.name,
            metric=fit.metric,
            before={split: float(value) for split, value in before.items()},
            after={split: float(value) for split, value in after.items()},
            best_dev=None if best_dev is None else float(best_dev),
            steps=len(fit.history),
            stopped=fit.stopped,
            calls=sum(usage.calls for usage in totals),
            tokens=sum(usage.tokens for usage in totals),
            cost=sum(usage.cost for usage in totals),
            seconds=round(seconds, 3),
            by_model={name: attrs.asdict(ledger.total) for name, ledger in ledgers.items()},
        )

    def to_json(self) -> dict[str, Any]:
        """The file's object, keys in the order the file has them."""
        return {
            "task": self.task,
            "metric": self.metric,
            "before": dict(self.before),
            "after": dict(self.after),
            "best_dev": self.best_dev,
            "steps": self.steps,
            "stopped": self.stopped,
            "calls": self.calls,
            "tokens": self.tokens,
            "cost": self.cost,
            "seconds": self.seconds,
            "by_model": {name: dict(totals) for name, totals in self.by_model.items()},
        }

    def write(self, path: str | os.PathLike[str]) -> None:
        """Atomically: a reader sees the whole file or none."""
        write_atomic(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> RunResult:
        """A result.json, checked field by field (a file is untrusted input); ConfigError names
        the file and what is wrong."""
        try:
            data = parse_json(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: not JSON ({error})") from None
        try:
            return cls.from_json(data)
        except ValueError as error:
            raise ConfigError(f"{path}: {error}") from None

    @classmethod
    def from_json(cls, data: object) -> RunResult:
        """The record of a file's object; ValueError says what is not what a run writes."""
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        after = _scores_by_split(data, "after", required=True)
        unknown = sorted(set(data) - set(attrs.fields_dict(cls)))
        if unknown:
            raise ValueError(f"unknown key {unknown[0][:40]!r}")
        for counter in COUNTERS:
            value = data.get(counter)
            whole = counter != "cost"
            if not _number(value) or value < 0 or (whole and not isinstance(value, int)):
                kind = "a whole number" if whole else "a number"
                raise ValueError(f"{counter!r} must be {kind} >= 0, got {value!r}")
        return cls(
            task=_optional(data, "task", str, ""),
            metric=_optional(data, "metric", str, "exact"),
            before=_scores_by_split(data, "before", required=False),
            after=after,
            best_dev=_score_or_none(data.get("best_dev")),
            steps=data["steps"],
            stopped=_optional(data, "stopped", str, ""),
            calls=data["calls"],
            tokens=data["tokens"],
            cost=data["cost"],
            seconds=_seconds(data.get("seconds", 0.0)),
            by_model=_totals(data.get("by_model", {})),
        )


def _scores_by_split(data: dict[str, Any], key: str, *, required: bool) -> dict[str, float]:
    """The metric's mean by split: dev or test, each a finite number (a metric's values
    need not lie in [0, 1])."""
    found = data.get(key, None if required else {})
    if not isinstance(found, dict) or (required and not found):
        raise ValueError(f"{key!r} must map splits to scores")
    for split, score in found.items():
        if split not in SPLITS or not _number(score) or not math.isfinite(score):
            raise ValueError(f"{key!r}: {split!r} must be dev or test with a finite score")
    return dict(found)


def _score_or_none(value: object) -> float | None:
    if value is None or (_number(value) and math.isfinite(value)):
        return value
    raise ValueError(f"'best_dev' must be a finite score or null, got {value!r}")


def _seconds(value: object) -> float:
    if _number(value) and 0 <= value < math.inf:
        return value
    raise ValueError(f"'seconds' must be a number >= 0, got {value!r}")


def _optional(data: dict[str, Any], key: str, kind: type[str], default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, kind):
        raise ValueError(f"{key!r} must be text, got {value!r}")
    return value


def _totals(value: object) -> dict[str, dict[str, float]]:
    """Counts by engine name and counter: a table of tables of numbers."""
    if not isinstance(value, dict) or not all(
        isinstance(totals, dict) and all(_number(count) for count in totals.values())
        for totals in value.values()
    ):
        raise ValueError("'by_model' must map engine names to tables of counts")
    return {str(name): dict(totals) for name, totals in value.items()}
