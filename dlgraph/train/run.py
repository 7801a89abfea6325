"""A training around the steps: dev evaluation, best-network selection, early stopping,
budget stops, checkpoints after every step, resuming, and the step log."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

import attrs
from attrs.validators import optional

from dlgraph._files import remove_stale_temporaries, write_atomic
from dlgraph._validate import file_path, function, integer
from dlgraph.data.example import Example, check_dataset
from dlgraph.engine import Engine, Usage
from dlgraph.errors import BudgetExhausted, CheckpointError
from dlgraph.evaluation import evaluate
from dlgraph.metrics import DEFAULT, Metric
from dlgraph.network import Network
from dlgraph.train.candidates import Memory
from dlgraph.train.checkpoint import (
    BEST_FILENAME,
    FILENAME,
    OPTIONS_SINCE_VERSION_3,
    VERSION,
    WITHOUT_RESULTS,
    Checkpoint,
)
from dlgraph.train.compare import Comparison, Key, Referee, Results, network_key
from dlgraph.train.options import TrainerOptions
from dlgraph.train.race import Tally
from dlgraph.train.records import FitResult, StepOutcome, StepRecord
from dlgraph.train.waves import Wave, by_phase

logger = logging.getLogger(__name__)

StepCallback = Callable[[StepRecord], Awaitable[None] | None]


MAX_STEPS = 10_000
"""The most steps a run may take: ten thousand steps of the smallest batch already make over a
million calls, and the estimate before a run lays out every step."""


KNOWN_NETWORKS = 64
"""Networks whose dev results a run keeps, the most recently used: the ones it revisits (the
best, the current one, remembered candidates proposed again) within a bound on long runs
with large dev sets."""


@attrs.frozen(kw_only=True)
class Schedule:
    """How long a training goes and when it evaluates: the keywords of `fit`, the [train]
    keys of a config."""

    steps: int = attrs.field(validator=integer(1, MAX_STEPS))
    batch_size: int = attrs.field(default=20, validator=integer(1))
    eval_every: int = attrs.field(default=1, validator=integer(1))
    """Evaluate on dev after every this many steps (and after the last)."""
    patience: int | None = attrs.field(default=None, validator=integer(1))
    """Stop after this many evaluations without a better dev score (the metric's)."""

    def evaluates_after(self, step: int) -> bool:
        """Whether step `step` (from 1) is followed by a dev evaluation."""
        return step % self.eval_every == 0 or step == self.steps


def _train_set(data: Sequence[Example]) -> list[Example]:
    return check_dataset(data, "train")


def _dev_set(data: Sequence[Example]) -> list[Example]:
    return check_dataset(data, "dev")


class Learner(Protocol):
    """What a run needs of its trainer (`VariationalTrainer` is one)."""

    net: Network
    engine: Engine
    options: TrainerOptions
    rng: random.Random
    memory: Memory
    steps_done: int
    tally: Tally

    @property
    def engines(self) -> list[Engine]: ...

    def check_data(self, train: Sequence[Example], dev: Sequence[Example]) -> None: ...
    def planned(self, step: int, batch: int, dev_size: int, evaluates: bool) -> list[Wave]: ...
    async def step(self, batch: Sequence[Example]) -> StepOutcome: ...
    def apply(self, outcome: StepOutcome) -> None: ...


@attrs.define(eq=False)
class Training:
    """One call of fit(): its data and schedule, its progress, and how it saves and resumes."""

    trainer: Learner
    train: list[Example] = attrs.field(converter=_train_set)
    dev: list[Example] = attrs.field(converter=_dev_set)
    schedule: Schedule
    checkpoint_dir: str | os.PathLike[str] | None = attrs.field(
        default=None, kw_only=True, validator=file_path
    )
    log_path: str | os.PathLike[str] | None = attrs.field(
        default=None, kw_only=True, validator=file_path
    )
    on_step: StepCallback | None = attrs.field(
        default=None, kw_only=True, validator=optional(function)
    )
    metric: Metric = attrs.field(default=DEFAULT, kw_only=True)
    """Decides which network is kept: dev evaluations, selection, early stopping."""
    history: list[StepRecord] = attrs.field(factory=list, init=False)
    best: Network | None = attrs.field(default=None, init=False)
    best_score: float | None = attrs.field(default=None, init=False)
    initial_score: float | None = attrs.field(default=None, init=False)
    evaluations_since_best: int = attrs.field(default=0, init=False)
    incumbent: list[float] | None = attrs.field(factory=list, init=False)
    """The best network's metric score on each dev example (their mean is `best_score`);
    None after resuming a version-2 checkpoint, until the next step rebuilds them."""
    known: dict[Key, Results] = attrs.field(factory=dict, init=False)
    """The dev results of the networks this process scored most recently (at most
    `KNOWN_NETWORKS`), so that none of them is scored twice."""

    def fingerprint(self, version: int = VERSION) -> str:
        """Identifies a run's setup: structure (not prompts), options, data and batch size, as
        a checkpoint of format `version` states it (version 2 knew fewer options)."""
        structure = self.trainer.net.to_json()
        for node in structure["nodes"]:
            node.pop("prompt")
        options = self.trainer.options.to_json()
        if version == WITHOUT_RESULTS:
            for name in OPTIONS_SINCE_VERSION_3:
                del options[name]
        setup = {
            "network": structure,
            "options": options,
            "batch_size": self.schedule.batch_size,
            "train": [[e.input, e.target] for e in self.train],
            "dev": [[e.input, e.target] for e in self.dev],
        }
        if self.metric is not DEFAULT:  # a default run's checkpoint from before metrics resumes
            setup["metric"] = self.metric.name
        return hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()

    async def execute(self) -> FitResult:
        trainer = self.trainer
        trainer.check_data(self.train, self.dev)
        fingerprint = self.fingerprint()
        self._check_paths()
        self._remove_stale_temporaries()
        stopped = "steps"
        try:
            if not await self._resume(fingerprint):
                self.best = trainer.net.copy()  # kept even if the budget ends the first evaluation
                score = await evaluate(trainer.net, trainer.engine, self.dev, metric=self.metric)
                self._hold_best(trainer.net, score.per_example)
                self.initial_score = float(score)
                self.best_score = self.initial_score
            while trainer.steps_done < self.schedule.steps:
                patience = self.schedule.patience
                if patience is not None and self.evaluations_since_best >= patience:
                    stopped = "early_stopping"
                    break
                if self.incumbent is None:
                    await self._rebuild_incumbent()
                record = await self._traced_step()
                self._save(fingerprint)
                self._log(record)
                await self._notify(record)
        except BudgetExhausted as error:
            logger.info("training stopped: %s", error)
            stopped = "budget"
        assert self.best is not None
        for name, parameter in self.best.parameters().items():
            trainer.net.set_parameter(name, parameter)
        if self.checkpoint_dir is not None:
            self.best.save(Path(self.checkpoint_dir) / BEST_FILENAME)
        return FitResult(
            network=self.best.copy(),
            best_dev_score=self.best_score,
            initial_dev_score=self.initial_score,
            metric=self.metric.name,
            history=list(self.history),
            stopped=stopped,
        )

    async def _traced_step(self) -> StepRecord:
        """One step in a ``dlgraph.step`` span, the parent of its parts and its dev evaluation
        (when the engine traces)."""
        with self.trainer.engine.tracer.span("step", step=self.trainer.steps_done + 1) as span:
            record = await self._one_step()
            span.set("batch_loss", record.batch_loss)
            if record.dev_score is not None:
                span.set("dev_score", record.dev_score)
        return record

    async def _one_step(self) -> StepRecord:
        """Run, apply and evaluate one step; on any error nothing of it is kept."""
        trainer = self.trainer
        before, phases_before = _spent(trainer), _by_phase(trainer)
        rng_state = trainer.rng.getstate()
        try:
            batch = trainer.rng.sample(self.train, min(self.schedule.batch_size, len(self.train)))
            number = trainer.steps_done + 1
            evaluates = self.schedule.evaluates_after(number)
            planned = trainer.planned(number, len(batch), len(self.dev), evaluates)
            outcome = await trainer.step(batch)
            comparison = None
            if evaluates:
                candidate = trainer.net.copy()
                for name, parameter in outcome.parameters.items():
                    candidate.set_parameter(name, parameter)
                comparison = await self._compare(candidate)
        except BaseException:
            trainer.rng.setstate(rng_state)
            raise
        trainer.apply(outcome)
        trainer.steps_done = number
        sent = _by_phase(trainer)
        trainer.tally.add(
            {phase: calls - phases_before.get(phase, 0) for phase, calls in sent.items()},
            {phase: count.expected for phase, count in by_phase(planned).items()},
        )
        dev_score = None
        if comparison is not None:
            self._consider(comparison)
            dev_score = comparison.score
        spent = _spent(trainer)
        record = StepRecord(
            step=number,
            batch_loss=outcome.batch_loss,
            prompts=trainer.net.prompts(),
            demonstrations={
                name: [d.to_json() for d in parameter.demonstrations]
                for name, parameter in trainer.net.parameters().items()
            },
            elbo=outcome.elbo,
            posterior_entropy=outcome.posterior_entropy,
            dev_score=dev_score,
            metric=self.metric.name,
            calls=spent.calls - before.calls,
            tokens=spent.tokens - before.tokens,
        )
        self.history.append(record)
        return record

    async def _rebuild_incumbent(self) -> None:
        """The best network's per-example dev results, which a version-2 checkpoint did not
        keep: one dev evaluation (phase ``eval``, counted like any), before the first step
        after resuming it; the next save writes them (version 3). Its mean becomes the best
        score, which the comparisons are against (a backend that no longer answers as it did
        moves it; logged)."""
        assert self.best is not None
        score = await evaluate(self.best, self.trainer.engine, self.dev, metric=self.metric)
        if self.best_score is not None and not math.isclose(
            score, self.best_score, rel_tol=1e-9, abs_tol=1e-12
        ):
            logger.warning(
                "the best network scores %g on dev now, %g when the checkpoint was written; "
                "later steps are compared with %g",
                score,
                self.best_score,
                score,
            )
        self._hold_best(self.best, score.per_example)
        self.best_score = float(score)

    async def _compare(self, candidate: Network) -> Comparison:
        """The step's dev evaluation: `candidate` against the best network so far under the
        run's metric, stopped once settled (`dlgraph.train.compare`); what it scored is kept
        and tallied."""
        trainer = self.trainer
        assert self.incumbent is not None, "rebuilt before the step"
        key = network_key(candidate)
        with trainer.engine.tracer.span("evaluate", examples=len(self.dev)) as span:
            comparison = await Referee.of(trainer.options, self.metric).compare(
                candidate,
                trainer.engine,
                self.dev,
                self.order,
                self.incumbent,
                self.known.get(key, {}),
            )
            span.set("score", comparison.score)
            span.set("scored", comparison.scored)
        self._know(key, comparison.results)
        return comparison

    def _hold_best(self, net: Network, results: Sequence[float]) -> None:
        """`net`'s per-example dev results as the best network's: what comparisons are
        against, and known, so that `net` is not scored on dev again."""
        self.incumbent = list(results)
        self._know(network_key(net), dict(enumerate(self.incumbent)))

    def _know(self, key: Key, results: Results) -> None:
        """Keep a network's dev results, as the most recently used of `KNOWN_NETWORKS`."""
        self.known.pop(key, None)
        self.known[key] = results
        while len(self.known) > KNOWN_NETWORKS:
            del self.known[next(iter(self.known))]

    @property
    def order(self) -> list[int]:
        """The dev examples in the order comparisons score them: shuffled once per run (a
        dev file sorted by class would otherwise settle nothing until its end)."""
        order = list(range(len(self.dev)))
        random.Random(self.trainer.options.seed).shuffle(order)
        return order

    def _consider(self, comparison: Comparison) -> None:
        if comparison.is_better:
            self.best, self.best_score = self.trainer.net.copy(), comparison.score
            self.incumbent = [comparison.results[i] for i in range(len(self.dev))]
            self.evaluations_since_best = 0
        else:
            self.evaluations_since_best += 1

    def _log(self, record: StepRecord) -> None:
        logger.info(
            "step %d: batch loss %.3f, dev %s %s",
            record.step,
            record.batch_loss,
            record.metric,
            record.dev_score,
        )
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as stream:
                stream.write(json.dumps(record.to_json()) + "\n")

    async def _notify(self, record: StepRecord) -> None:
        if self.on_step is not None:
            result = self.on_step(record)
            if inspect.isawaitable(result):
                await result

    def _check_paths(self) -> None:
        """Refuse a checkpoint folder or step log that could not be written, before any call
        (a file where the folder should be would otherwise be found at the first save)."""
        if self.checkpoint_dir is not None:
            _make_folder("checkpoint_dir", Path(self.checkpoint_dir))
        if self.log_path is not None:
            log = Path(self.log_path)
            if log.is_dir():
                raise CheckpointError(f"log_path {log}: is a folder, not a file")
            _make_folder("log_path folder", log.parent)

    def _remove_stale_temporaries(self) -> None:
        if self.checkpoint_dir is not None:
            for name in (FILENAME, BEST_FILENAME):
                remove_stale_temporaries(Path(self.checkpoint_dir) / name)
        if self.log_path is not None:
            remove_stale_temporaries(self.log_path)

    def _save(self, fingerprint: str) -> None:
        """Commit the step: one atomic write holds the state and every step's record."""
        if self.checkpoint_dir is None:
            return
        trainer = self.trainer
        assert self.best is not None and self.incumbent is not None
        Checkpoint(
            step=trainer.steps_done,
            fingerprint=fingerprint,
            network=trainer.net.copy(),
            best_network=self.best,
            best_score=self.best_score,
            initial_score=self.initial_score,
            evaluations_since_best=self.evaluations_since_best,
            best_results=list(self.incumbent),
            memory=trainer.memory,
            rng_state=trainer.rng.getstate(),
            history=list(self.history),
            ledger=trainer.engine.statistics().to_json(),
        ).write(self.checkpoint_dir)
        self.best.save(Path(self.checkpoint_dir) / BEST_FILENAME)

    async def _resume(self, fingerprint: str) -> bool:
        """Restore the state of the checkpoint (checked whole before anything is touched)."""
        if self.checkpoint_dir is None:
            return False
        checkpoint = Checkpoint.read(self.checkpoint_dir)
        if checkpoint is None:
            return False
        if checkpoint.version != VERSION:
            fingerprint = self.fingerprint(checkpoint.version)
        if checkpoint.fingerprint != fingerprint:
            raise CheckpointError(
                f"{Path(self.checkpoint_dir) / FILENAME}: written for another setup "
                "(network structure, trainer options, data or batch size differ); "
                "use a new checkpoint_dir or the original setup"
            )
        trainer = self.trainer
        checkpoint.check_fits(
            trainer.net, trainer.options, len(self.dev), Path(self.checkpoint_dir) / FILENAME
        )
        for name, parameter in checkpoint.network.parameters().items():
            trainer.net.set_parameter(name, parameter)
        trainer.memory = checkpoint.memory
        trainer.memory.size = trainer.options.memory_size
        trainer.rng.setstate(checkpoint.rng_state)
        trainer.steps_done = checkpoint.step
        self.history = list(checkpoint.history)
        self.best, self.best_score = checkpoint.best_network, checkpoint.best_score
        self.initial_score = checkpoint.initial_score
        self.evaluations_since_best = checkpoint.evaluations_since_best
        if checkpoint.best_results is None:
            self.incumbent = None  # rebuilt before the next step (`_rebuild_incumbent`)
        else:
            self._hold_best(checkpoint.best_network, checkpoint.best_results)
        logger.info(
            "resumed from step %d (checkpoint version %d)", checkpoint.step, checkpoint.version
        )
        await self._replay_log()
        return True

    async def _replay_log(self) -> None:
        """Make the step log hold exactly the checkpoint's records, and report again the ones
        it lacked: a kill between committing a step and logging it (or mid-line) loses no
        record and repeats none."""
        if self.log_path is None:
            return
        logged = logged_steps(self.log_path)
        write_atomic(self.log_path, "".join(json.dumps(r.to_json()) + "\n" for r in self.history))
        for record in self.history:
            if record.step not in logged:
                await self._notify(record)


def _make_folder(what: str, folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{what} {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"{what} {folder}: cannot be made ({error.strerror})") from None


def _by_phase(trainer: Learner) -> dict[str, int]:
    """The calls the trainer's engines made so far, by phase."""
    calls: dict[str, int] = {}
    for engine in trainer.engines:
        for phase, usage in engine.statistics().by_phase().items():
            calls[phase] = calls.get(phase, 0) + usage.calls
    return calls


def _spent(trainer: Learner) -> Usage:
    """What the trainer's engines spent so far, together."""
    return sum((engine.statistics().total for engine in trainer.engines), Usage())


def logged_steps(path: str | os.PathLike[str]) -> set[int]:
    """Step numbers of the whole records in a step log (a truncated line is no record)."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return set()
    steps = set()
    for line in lines:
        try:
            steps.add(StepRecord.from_json(json.loads(line)).step)
        except (ValueError, TypeError):
            continue
    return steps
