"""A training run around the steps: dev evaluation, best-network selection, early stopping,
budget stops, checkpoints after every step, resuming, and the step log."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

from dlgraph._validate import integer
from dlgraph.data.example import Example, check_dataset
from dlgraph.engine import Engine
from dlgraph.errors import BudgetExhausted, CheckpointError
from dlgraph.evaluation import evaluate
from dlgraph.network import Network
from dlgraph.train.checkpoint import Checkpoint
from dlgraph.train.options import TrainerOptions
from dlgraph.train.proposals import PromptMemory
from dlgraph.train.records import FitResult, StepOutcome, StepRecord

logger = logging.getLogger(__name__)

StepCallback = Callable[[StepRecord], Awaitable[None] | None]


@attrs.frozen(kw_only=True)
class RunSettings:
    """How long and how a run trains: the keywords of `fit`, the [train] keys of a config."""

    steps: int = attrs.field(validator=integer(1))
    batch_size: int = attrs.field(default=20, validator=integer(1))
    eval_every: int = attrs.field(default=1, validator=integer(1))
    """Evaluate on dev after every this many steps (and after the last)."""
    patience: int | None = attrs.field(default=None, validator=integer(1))
    """Stop after this many evaluations without a better dev accuracy."""


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
    memory: PromptMemory
    steps_done: int

    def gold_targets(self, data: Sequence[Example], name: str = "data") -> list[str]: ...
    async def step(self, batch: Sequence[Example]) -> StepOutcome: ...
    def apply(self, outcome: StepOutcome) -> None: ...


@attrs.define(eq=False)
class Run:
    """One call of fit(): its data and settings, its progress, and how it saves and resumes."""

    trainer: Learner
    train: list[Example] = attrs.field(converter=_train_set)
    dev: list[Example] = attrs.field(converter=_dev_set)
    settings: RunSettings
    checkpoint_dir: str | os.PathLike[str] | None = attrs.field(default=None, kw_only=True)
    log_path: str | os.PathLike[str] | None = attrs.field(default=None, kw_only=True)
    on_step: StepCallback | None = attrs.field(default=None, kw_only=True)
    history: list[StepRecord] = attrs.field(factory=list, init=False)
    best: Network | None = attrs.field(default=None, init=False)
    best_score: float | None = attrs.field(default=None, init=False)
    initial_score: float | None = attrs.field(default=None, init=False)
    evaluations_since_best: int = attrs.field(default=0, init=False)

    def fingerprint(self) -> str:
        """Identifies a run's setup: structure (not prompts), options, data and batch size."""
        structure = self.trainer.net.to_json()
        for node in structure["nodes"]:
            node.pop("prompt")
        setup = {
            "network": structure,
            "options": self.trainer.options.to_json(),
            "batch_size": self.settings.batch_size,
            "train": [attrs.astuple(e) for e in self.train],
            "dev": [attrs.astuple(e) for e in self.dev],
        }
        return hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()

    async def execute(self) -> FitResult:
        trainer = self.trainer
        trainer.gold_targets(self.train, "train")
        trainer.gold_targets(self.dev, "dev")
        fingerprint = self.fingerprint()
        stopped = "steps"
        try:
            if not self._resume(fingerprint):
                self.initial_score = await evaluate(trainer.net, trainer.engine, self.dev)
                self.best, self.best_score = trainer.net.copy(), self.initial_score
            while trainer.steps_done < self.settings.steps:
                patience = self.settings.patience
                if patience is not None and self.evaluations_since_best >= patience:
                    stopped = "early_stopping"
                    break
                record = await self._one_step()
                self._save(fingerprint)
                await self._report(record)
        except BudgetExhausted as error:
            logger.info("training stopped: %s", error)
            stopped = "budget"
        assert self.best is not None
        for name, prompt in self.best.prompts().items():
            trainer.net.set_prompt(name, prompt)
        if self.checkpoint_dir is not None:
            self.best.save(Path(self.checkpoint_dir) / "best.json")
        return FitResult(
            network=self.best.copy(),
            best_dev_accuracy=self.best_score,
            initial_dev_accuracy=self.initial_score,
            history=list(self.history),
            stopped=stopped,
        )

    async def _one_step(self) -> StepRecord:
        """Run, apply and evaluate one step; on any error nothing of it is kept."""
        trainer = self.trainer
        before = trainer.engine.statistics().total
        rng_state = trainer.rng.getstate()
        try:
            batch = trainer.rng.sample(self.train, min(self.settings.batch_size, len(self.train)))
            outcome = await trainer.step(batch)
            number = trainer.steps_done + 1
            dev_accuracy = None
            if number % self.settings.eval_every == 0 or number == self.settings.steps:
                candidate = trainer.net.copy()
                for name, prompt in outcome.prompts.items():
                    candidate.set_prompt(name, prompt)
                dev_accuracy = await evaluate(candidate, trainer.engine, self.dev)
        except BaseException:
            trainer.rng.setstate(rng_state)
            raise
        trainer.apply(outcome)
        trainer.steps_done = number
        if dev_accuracy is not None:
            self._consider(dev_accuracy)
        spent = trainer.engine.statistics().total
        record = StepRecord(
            step=number,
            batch_loss=outcome.batch_loss,
            prompts=trainer.net.prompts(),
            elbo=outcome.elbo,
            posterior_entropy=outcome.posterior_entropy,
            dev_accuracy=dev_accuracy,
            calls=spent.calls - before.calls,
            tokens=spent.tokens - before.tokens,
        )
        self.history.append(record)
        return record

    def _consider(self, dev_accuracy: float) -> None:
        if self.best_score is None or dev_accuracy > self.best_score:
            self.best, self.best_score = self.trainer.net.copy(), dev_accuracy
            self.evaluations_since_best = 0
        else:
            self.evaluations_since_best += 1

    async def _report(self, record: StepRecord) -> None:
        logger.info(
            "step %d: batch loss %.3f, dev %s", record.step, record.batch_loss, record.dev_accuracy
        )
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as stream:
                stream.write(json.dumps(record.to_json()) + "\n")
        if self.on_step is not None:
            result = self.on_step(record)
            if inspect.isawaitable(result):
                await result

    def _save(self, fingerprint: str) -> None:
        if self.checkpoint_dir is None:
            return
        trainer = self.trainer
        assert self.best is not None
        Checkpoint(
            step=trainer.steps_done,
            fingerprint=fingerprint,
            network=trainer.net.to_json(),
            best_network=self.best.to_json(),
            best_score=self.best_score,
            initial_score=self.initial_score,
            evaluations_since_best=self.evaluations_since_best,
            memory=trainer.memory.to_json(),
            rng_state=_json_state(trainer.rng.getstate()),
            history=[r.to_json() for r in self.history],
            ledger=trainer.engine.statistics().to_json(),
        ).write(self.checkpoint_dir)
        self.best.save(Path(self.checkpoint_dir) / "best.json")

    def _resume(self, fingerprint: str) -> bool:
        if self.checkpoint_dir is None:
            return False
        checkpoint = Checkpoint.read(self.checkpoint_dir)
        if checkpoint is None:
            return False
        if checkpoint.fingerprint != fingerprint:
            raise CheckpointError(
                f"{Path(self.checkpoint_dir) / 'checkpoint.json'}: written for another setup "
                "(network structure, trainer options, data or batch size differ); "
                "use a new checkpoint_dir or the original setup"
            )
        trainer = self.trainer
        network = Network.from_json(checkpoint.network)
        for name, prompt in network.prompts().items():
            trainer.net.set_prompt(name, prompt)
        trainer.memory = PromptMemory(trainer.options.memory_size, best=checkpoint.memory)
        trainer.rng.setstate(_python_state(checkpoint.rng_state))
        trainer.steps_done = checkpoint.step
        self.history = [StepRecord.from_json(r) for r in checkpoint.history]
        self.best, self.best_score = (
            Network.from_json(checkpoint.best_network),
            checkpoint.best_score,
        )
        self.initial_score = checkpoint.initial_score
        self.evaluations_since_best = checkpoint.evaluations_since_best
        logger.info("resumed from step %d", checkpoint.step)
        return True


def _json_state(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state(state: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
