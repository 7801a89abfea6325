"""The variational trainer: one generic step for any DAG of language nodes.

A step reads like micrograd's backward(): a forward pass, then posterior targets for hidden
nodes in reverse topological order, then new prompts for every trainable node, each chosen
by its ELBO. DLN-1 (one node) and DLN-2 (two nodes and a residual edge) are just networks.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.data.example import Example, check_dataset
from dlgraph.engine import Engine
from dlgraph.errors import BudgetExhausted, CheckpointError, DataError, GraphError
from dlgraph.forward import Trace, forward
from dlgraph.network import Network
from dlgraph.scoring import accuracy, evaluate, matching_class, verbalizers
from dlgraph.train import posterior as posterior_inference
from dlgraph.train.checkpoint import Checkpoint
from dlgraph.train.elbo import (
    AccuracyScorer,
    LogprobScorer,
    Scorer,
    Term,
    elbo,
    example_scores,
    prune,
)
from dlgraph.train.options import TrainerOptions
from dlgraph.train.posterior import Posterior
from dlgraph.train.proposals import (
    PromptMemory,
    candidate_prompts,
    clean_proposal,
    proposal_requests,
)
from dlgraph.train.records import Estimate, FitResult, StepRecord

logger = logging.getLogger(__name__)

StepCallback = Callable[[StepRecord], Awaitable[None] | None]


@attrs.frozen
class StepOutcome:
    """What one step decided, before it is applied."""

    batch_loss: float
    prompts: dict[str, str]
    elbo: dict[str, list[tuple[str, float]]]
    posterior_entropy: dict[str, float]
    posteriors: dict[str, Posterior] = attrs.field(factory=dict, repr=False)
    """Per hidden node, its candidates and weights on this batch."""


class VariationalTrainer:
    """Learns every trainable prompt of `net` jointly; see DESIGN.md, "The trainer".

    Options are the keywords of `TrainerOptions` (or one `options` record). Everything random
    flows from `seed`. Raises GraphError for a network it cannot train (not exactly one
    output node, an unknown trainable name).
    """

    def __init__(
        self, net: Network, engine: Engine, options: TrainerOptions | None = None, **keywords: Any
    ) -> None:
        self.net = net
        self.engine = engine
        self.options = attrs.evolve(options or TrainerOptions(), **keywords)
        net.validate()
        outputs = net.output_nodes()
        if len(outputs) != 1:
            raise GraphError(
                f"training needs exactly one output node, found {len(outputs)}: {', '.join(outputs)}"
            )
        self.output = outputs[0]
        for name in self.options.trainable or ():
            net.node(name)  # raises GraphError naming an unknown node
        self.rng = random.Random(self.options.seed)
        self.memory = PromptMemory(self.options.memory_size)
        self.steps_done = 0

    @property
    def trainable_nodes(self) -> list[str]:
        chosen = self.options.trainable
        return [
            name
            for name in self.net.topological_order()
            if (name in chosen if chosen is not None else self.net.node(name).is_trainable)
        ]

    def _scorer(self) -> Scorer:
        mode = self.options.scoring
        if mode == "auto":
            mode = "logprob" if self.engine.backend.capabilities.exact_logprobs else "accuracy"
        return LogprobScorer(self.engine) if mode == "logprob" else AccuracyScorer(self.engine)

    # -- one step ----------------------------------------------------------------------------

    def gold_targets(self, data: Sequence[Example], name: str = "data") -> list[str]:
        """Targets as the output node's class names; DataError for one outside its classes."""
        node = self.net.node(self.output)
        if not node.classes:
            return [example.target for example in data]
        targets = []
        for index, example in enumerate(data):
            found = matching_class(example.target, node.classes)
            if found is None:
                raise DataError(
                    f"{name}[{index}]: target {example.target!r} is not a class of node "
                    f"{self.output!r} ({', '.join(node.class_names)})"
                )
            targets.append(found)
        return targets

    async def step(self, batch: Sequence[Example]) -> StepOutcome:
        """Decide new prompts from one minibatch; nothing is changed until `apply`."""
        scorer = self._scorer()
        trace = await forward(self.net, self.engine, [e.input for e in batch])
        targets: dict[str, list[str]] = {self.output: self.gold_targets(batch, "batch")}
        posteriors: dict[str, Posterior] = {}
        for name in reversed(self.net.hidden_nodes()):
            if self.options.use_posterior:
                posteriors[name] = await posterior_inference.infer(
                    self.net, name, trace, targets, self.engine, scorer, self.options
                )
            else:
                posteriors[name] = Posterior.point(trace.outputs[name])
            targets[name] = posteriors[name].targets
        candidates = await self._candidates(trace, targets)
        elbos = await self._elbos(trace, targets, posteriors, candidates, scorer)
        node = self.net.node(self.output)
        return StepOutcome(
            batch_loss=1.0
            - accuracy(trace.outputs[self.output], targets[self.output], node.classes),
            prompts={
                name: max(scored, key=lambda pair: pair[1])[0] for name, scored in elbos.items()
            },
            elbo=elbos,
            posterior_entropy={name: p.mean_entropy for name, p in posteriors.items()},
            posteriors=posteriors,
        )

    def apply(self, outcome: StepOutcome) -> None:
        for name, prompt in outcome.prompts.items():
            self.net.set_prompt(name, prompt)
        for name, scored in outcome.elbo.items():
            self.memory.remember(name, dict(scored))

    async def _candidates(
        self, trace: Trace, targets: Mapping[str, Sequence[str]]
    ) -> dict[str, list[str]]:
        """Current prompt, remembered prompts and new proposals, per trainable node."""
        requests = [
            request
            for name in self.trainable_nodes
            for request in proposal_requests(
                self.net, name, trace, targets, self.options, self.rng, self.steps_done
            )
        ]

        async def propose(request: Any) -> str:
            text = await self.engine.generate(
                request.prompt,
                max_tokens=self.options.proposal_max_tokens,
                temperature=self.options.sample_temperature,
                stop=("[/instruction]",),
                seed=request.seed,
                node=request.node,
                phase="propose",
            )
            return clean_proposal(text)

        proposed = await map_concurrently(propose, requests)
        return {
            name: candidate_prompts(
                self.net.node(name).prompt,
                self.memory.prompts(name),
                [
                    text
                    for request, text in zip(requests, proposed, strict=True)
                    if request.node == name
                ],
            )
            for name in self.trainable_nodes
        }

    def _terms(
        self,
        name: str,
        trace: Trace,
        targets: Mapping[str, Sequence[str]],
        posteriors: Mapping[str, Posterior],
    ) -> list[list[Term]]:
        """Each example's weighted (inputs, target) pairs for scoring node `name`.

        An output node's expectation runs over its hidden parents' posterior candidates,
        aligned: the k-th candidates of all hidden parents go together, with the product of
        their weights (a shorter candidate set wraps around). A hidden node's runs over its
        own candidates, its inputs at their forward values.
        """
        terms = []
        for i in range(len(trace)):
            if name in posteriors:
                own = posteriors[name]
                example = [
                    Term(trace.values(i), c, w)
                    for c, w in zip(own.candidates[i], own.weights[i], strict=True)
                ]
            else:
                hidden = [p for p in self.net.parents(name) if p in posteriors]
                size = max((len(posteriors[p].candidates[i]) for p in hidden), default=1)
                example = []
                for k in range(size):
                    values, weight = trace.values(i), 1.0
                    for p in hidden:
                        cands, weights = posteriors[p].candidates[i], posteriors[p].weights[i]
                        values[p] = cands[k % len(cands)]
                        weight *= weights[k % len(weights)]
                    example.append(Term(values, targets[name][i], weight))
            terms.append(prune(example, self.options.min_weight))
        return terms

    async def _elbos(
        self,
        trace: Trace,
        targets: Mapping[str, Sequence[str]],
        posteriors: Mapping[str, Posterior],
        candidates: Mapping[str, list[str]],
        scorer: Scorer,
    ) -> dict[str, list[tuple[str, float]]]:
        """ELBO of every candidate of every trainable node, all nodes scored at once."""
        names = list(candidates)

        async def score(name: str) -> list[tuple[str, float]]:
            terms = self._terms(name, trace, targets, posteriors)
            per_example = await example_scores(self.net, name, candidates[name], terms, scorer)
            trust = self.options.trust_region if name == self.output else 0.0
            return list(zip(candidates[name], elbo(per_example, trust), strict=True))

        return dict(zip(names, await map_concurrently(score, names), strict=True))

    # -- a run -------------------------------------------------------------------------------

    def fingerprint(self, train: Sequence[Example], dev: Sequence[Example], batch_size: int) -> str:
        """Identifies a run's setup: structure (not prompts), options, data and batch size."""
        structure = self.net.to_json()
        for node in structure["nodes"]:
            node.pop("prompt")
        setup = {
            "network": structure,
            "options": self.options.to_json(),
            "batch_size": batch_size,
            "train": [attrs.astuple(e) for e in train],
            "dev": [attrs.astuple(e) for e in dev],
        }
        return hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()

    async def fit(
        self,
        train: Sequence[Example],
        dev: Sequence[Example],
        steps: int,
        batch_size: int = 20,
        *,
        eval_every: int = 1,
        patience: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        on_step: StepCallback | None = None,
    ) -> FitResult:
        """Train for `steps` steps and leave `net` holding the best prompts on dev.

        With `checkpoint_dir`, state is saved after every step and a later call resumes
        from it, repeating no finished step; `best.json` there is the best network. A spent
        budget ends the run cleanly (``stopped="budget"``). Raises DataError for bad data,
        CheckpointError for a damaged or foreign checkpoint, BackendError for failed calls.
        """
        run = _Run(
            self,
            check_dataset(train, "train"),
            check_dataset(dev, "dev"),
            steps,
            batch_size,
            eval_every,
            patience,
            checkpoint_dir,
            log_path,
            on_step,
        )
        return await run.execute()

    def estimate(
        self,
        steps: int,
        batch_size: int,
        train: Sequence[Example] = (),
        dev_size: int = 0,
        eval_every: int = 1,
    ) -> Estimate:
        """Upper bounds on calls and tokens for a run (no cache hits, no pruning)."""
        return estimate(self, steps, batch_size, train, dev_size, eval_every)


def _calls_per_score(net: Network, name: str) -> int:
    """Backend calls for one log-likelihood: one per verbalizer for a class node."""
    node = net.node(name)
    return sum(len(verbalizers(spec)) for spec in node.classes) if node.classes else 1


def estimate(
    trainer: VariationalTrainer,
    steps: int,
    batch_size: int,
    train: Sequence[Example],
    dev_size: int,
    eval_every: int,
) -> Estimate:
    net, options = trainer.net, trainer.options
    batch = batch_size if not train else min(batch_size, len(train))
    hidden = net.hidden_nodes()
    size = {
        name: (len(net.node(name).classes or ()) or options.num_hidden_samples + 1)
        for name in hidden
    }
    forward_calls = sum(_calls_per_score(net, name) for name in net.nodes)
    posterior_calls = 0
    if options.use_posterior:
        for name in hidden:
            sampled = 0 if net.node(name).classes else options.num_hidden_samples
            evidence = sum(_calls_per_score(net, c) for c in net.children(name)) + 1
            posterior_calls += batch * (sampled + size[name] * evidence)
    score_calls = 0
    for name in trainer.trainable_nodes:
        candidates = 1 + options.num_prompt_samples + options.memory_size
        terms = size.get(name, 1)
        for parent in net.parents(name):
            terms = max(terms, size.get(parent, 1))
        score_calls += options.num_prompt_samples + candidates * batch * terms * _calls_per_score(
            net, name
        )
    evaluations = dev_size * forward_calls * (1 + -(-steps // eval_every))
    calls = steps * (batch * forward_calls + posterior_calls + score_calls) + evaluations
    text = " ".join(e.input for e in train[:50]) if train else ""
    per_call = (
        trainer.engine.backend.count_tokens(text) // max(1, min(50, len(train))) if train else 64
    )
    longest_prompt = max(trainer.engine.backend.count_tokens(n.prompt) for n in net.nodes.values())
    return Estimate(calls=calls, tokens=calls * (per_call + longest_prompt + 64))


@attrs.define(eq=False)
class _Run:
    """One call of fit(): its data, its progress, and how it saves and resumes."""

    trainer: VariationalTrainer
    train: list[Example]
    dev: list[Example]
    steps: int
    batch_size: int
    eval_every: int
    patience: int | None
    checkpoint_dir: str | os.PathLike[str] | None
    log_path: str | os.PathLike[str] | None
    on_step: StepCallback | None
    history: list[StepRecord] = attrs.Factory(list)
    best: Network | None = None
    best_score: float | None = None
    initial_score: float | None = None
    evaluations_since_best: int = 0

    async def execute(self) -> FitResult:
        trainer = self.trainer
        trainer.gold_targets(self.train, "train")
        trainer.gold_targets(self.dev, "dev")
        fingerprint = trainer.fingerprint(self.train, self.dev, self.batch_size)
        stopped = "steps"
        try:
            if not self._resume(fingerprint):
                self.initial_score = await evaluate(trainer.net, trainer.engine, self.dev)
                self.best, self.best_score = trainer.net.copy(), self.initial_score
            while trainer.steps_done < self.steps:
                if self.patience is not None and self.evaluations_since_best >= self.patience:
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
            batch = trainer.rng.sample(self.train, min(self.batch_size, len(self.train)))
            outcome = await trainer.step(batch)
            number = trainer.steps_done + 1
            dev_accuracy = None
            if number % self.eval_every == 0 or number == self.steps:
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
