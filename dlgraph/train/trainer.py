"""The variational trainer: one generic step for any DAG of language nodes.

A step reads like micrograd's backward(): a forward pass, then posterior targets for hidden
nodes in reverse topological order, then new prompts for every trainable node, each chosen
by its ELBO. DLN-1 (one node) and DLN-2 (two nodes and a residual edge) are just networks.
The run around the steps (evaluation, checkpoints, logs) is `dlgraph.train.run`; the cost
estimate is `dlgraph.train.estimate`.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.data.example import Example, check_dataset
from dlgraph.engine import Engine
from dlgraph.errors import DataError
from dlgraph.forward import Trace, forward
from dlgraph.network import Network
from dlgraph.nodes import Parameter
from dlgraph.train import posterior as posterior_inference
from dlgraph.train.candidates import (
    Memory,
    candidate_parameters,
    demonstration_sets,
    shown_examples,
)
from dlgraph.train.elbo import elbo, example_scores, expectation_terms
from dlgraph.train.estimate import estimate
from dlgraph.train.options import TrainerOptions
from dlgraph.train.pace import Pace, measure_pace
from dlgraph.train.posterior import Posterior
from dlgraph.train.proposals import END, ProposalRequest, clean_proposal, proposal_requests
from dlgraph.train.records import Estimate, FitResult, StepOutcome
from dlgraph.train.run import Schedule, StepCallback, Training
from dlgraph.train.scorers import AccuracyScorer, LogprobScorer, Scorer

logger = logging.getLogger(__name__)


class VariationalTrainer:
    """Learns every trainable node's prompt and demonstrations jointly; see ARCHITECTURE.md,
    "A training step".

    Options are the keywords of `TrainerOptions` (or one `options` record). Everything random
    flows from `seed`. `backward` is the engine that writes: proposals and posterior samples
    come from it (a stronger or a cheaper model), while forward passes and every
    log-likelihood stay on `engine`, whose model the prompts are for. Raises GraphError for a
    network it cannot train (an unknown trainable name).
    """

    def __init__(
        self,
        net: Network,
        engine: Engine,
        options: TrainerOptions | None = None,
        *,
        backward: Engine | None = None,
        **keywords: Any,
    ) -> None:
        self.net = net
        self.engine = engine
        self.backward = engine if backward is None else backward
        self.options = attrs.evolve(options or TrainerOptions(), **keywords)
        net.validate()
        self.outputs = net.output_nodes()
        for name in self.options.trainable or ():
            net.node(name)  # raises GraphError naming an unknown node
        self.rng = random.Random(self.options.seed)
        self.memory = Memory(self.options.memory_size)
        self.steps_done = 0

    @property
    def engines(self) -> list[Engine]:
        """The engines the trainer spends on, the forward one first."""
        return [self.engine] if self.backward is self.engine else [self.engine, self.backward]

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

    def check_data(self, train: Sequence[Example], dev: Sequence[Example]) -> None:
        """Everything about the data that can be known before a call: DataError otherwise."""
        self.net.targets(check_dataset(train, "train"), "train")
        self.net.targets(check_dataset(dev, "dev"), "dev")

    # -- one step ----------------------------------------------------------------------------

    async def step(self, batch: Sequence[Example]) -> StepOutcome:
        """Decide new parameters from one minibatch; nothing is changed until `apply`.

        When the engine traces, each part is a span: the forward pass, ``dlgraph.posterior``
        per hidden node, ``dlgraph.propose`` (the candidates) and ``dlgraph.score`` (their
        ELBOs), each the parent of its calls."""
        scorer = self._scorer()
        tracer = self.engine.tracer
        targets: dict[str, list[str]] = self.net.targets(batch, "batch")
        trace = await forward(self.net, self.engine, [e.input for e in batch])
        posteriors: dict[str, Posterior] = {}
        for name in reversed(self.net.hidden_nodes()):
            if self.options.use_posterior:
                with tracer.span("posterior", name, node=name):
                    posteriors[name] = await posterior_inference.infer(
                        self.net, name, trace, targets, self.backward, scorer, self.options
                    )
            else:
                posteriors[name] = Posterior.point(trace.outputs[name])
            targets[name] = posteriors[name].targets
        with tracer.span("propose"):
            candidates = await self._candidates(trace, targets)
        with tracer.span("score", candidates=sum(map(len, candidates.values()))):
            scored = await self._elbos(trace, targets, posteriors, candidates, scorer)
        losses = [
            1.0 - self.net.node(name).accuracy(trace.outputs[name], targets[name])
            for name in self.outputs
        ]
        return StepOutcome(
            batch_loss=sum(losses) / len(losses),
            parameters={
                name: max(pairs, key=lambda pair: pair[1])[0] for name, pairs in scored.items()
            },
            scored=scored,
            posterior_entropy={name: p.mean_entropy for name, p in posteriors.items()},
            posteriors=posteriors,
        )

    def apply(self, outcome: StepOutcome) -> None:
        for name, parameter in outcome.parameters.items():
            self.net.set_parameter(name, parameter)
        for name, pairs in outcome.scored.items():
            self.memory.remember(name, dict(pairs))

    async def _candidates(
        self, trace: Trace, targets: Mapping[str, Sequence[str]]
    ) -> dict[str, list[Parameter]]:
        """Per trainable node: the current parameter, remembered ones, proposed instructions
        (from the backward engine) and demonstration sets drawn from the batch."""
        requests = [
            request
            for name in self.trainable_nodes
            for request in proposal_requests(
                self.net, name, trace, targets, self.options, self.rng, self.steps_done
            )
        ]
        shown = {
            name: demonstration_sets(self.net, name, trace, targets, self.options, self.rng)
            for name in self.trainable_nodes
        }

        async def propose(request: ProposalRequest) -> str:
            text = await self.backward.generate(
                request.prompt,
                max_tokens=self.options.proposal_max_tokens,
                temperature=self.options.sample_temperature,
                stop=(END,),
                seed=request.seed,
                node=request.node,
                phase="propose",
            )
            return clean_proposal(text)

        proposed = await map_concurrently(propose, requests)
        return {
            name: [
                candidate
                for candidate in candidate_parameters(
                    self.net.node(name).parameter,
                    self.memory.parameters(name),
                    [text for r, text in zip(requests, proposed, strict=True) if r.node == name],
                    shown[name],
                )
                if self._fits(name, candidate, trace)
            ]
            for name in self.trainable_nodes
        }

    def _fits(self, name: str, candidate: Parameter, trace: Trace) -> bool:
        """Whether the candidate keeps the node's input within the model's context window
        (candidates that would not are left out, and logged)."""
        window = self.engine.backend.capabilities.context_window
        if window is None or not candidate.demonstrations:
            return True
        longest = max(range(len(trace)), key=lambda i: len(trace.rendered[name][i]))
        rendered = self.net.render(name, trace.values(longest), candidate)
        if self.engine.backend.count_tokens(rendered) + 64 <= window:
            return True
        logger.info(
            "node %r: a candidate with %d demonstrations exceeds the context window",
            name,
            len(candidate.demonstrations),
        )
        return False

    async def _elbos(
        self,
        trace: Trace,
        targets: Mapping[str, Sequence[str]],
        posteriors: Mapping[str, Posterior],
        candidates: Mapping[str, list[Parameter]],
        scorer: Scorer,
    ) -> dict[str, list[tuple[Parameter, float]]]:
        """ELBO of every candidate of every trainable node, all nodes scored at once."""
        names = list(candidates)

        async def score(name: str) -> list[tuple[Parameter, float]]:
            terms = expectation_terms(
                self.net, name, trace, targets, posteriors, self.options.min_weight
            )
            excluded = [shown_examples(self.net, name, c, trace, targets) for c in candidates[name]]
            per_example = await example_scores(
                self.net, name, candidates[name], terms, scorer, excluded
            )
            trust = self.options.trust_region if name in self.outputs else 0.0
            return list(zip(candidates[name], elbo(per_example, trust), strict=True))

        return dict(zip(names, await map_concurrently(score, names), strict=True))

    # -- a run -------------------------------------------------------------------------------

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
        from it, repeating no finished step; `best.json` there is the best network. The
        calls of a killed process count in the engines' statistics and budgets when the
        engines were made with ``journal=`` (as ``dlgraph train`` makes them). A spent
        budget ends the run cleanly (``stopped="budget"``). Raises DataError for bad data,
        CheckpointError for a damaged or foreign checkpoint, or for a `checkpoint_dir` or
        `log_path` that cannot be written (before any call), BackendError for failed calls.
        """
        schedule = Schedule(
            steps=steps, batch_size=batch_size, eval_every=eval_every, patience=patience
        )
        training = Training(
            self,
            train,
            dev,
            schedule,
            checkpoint_dir=checkpoint_dir,
            log_path=log_path,
            on_step=on_step,
        )
        with self.engine.tracer.span("fit", steps=steps, batch_size=batch_size) as span:
            result = await training.execute()
            span.set("stopped", result.stopped)
        return result

    def estimate(
        self,
        steps: int,
        batch_size: int,
        train: Sequence[Example] = (),
        dev_size: int = 0,
        eval_every: int = 1,
    ) -> Estimate:
        """Upper bounds on calls and tokens for a run (no cache hits, no pruning)."""
        schedule = Schedule(steps=steps, batch_size=batch_size, eval_every=eval_every)
        return estimate(
            self.net,
            self.options,
            self.trainable_nodes,
            self.engine.backend,
            schedule,
            train,
            dev_size,
            separate_backward=self.backward is not self.engine,
        )

    async def pace(self, examples: Sequence[Example], batch_size: int = 20) -> Pace:
        """Time a few calls of each kind the run will make, on each engine, so that
        ``estimate(...).seconds(pace)`` projects the run's wall time. Spends about twenty
        calls per engine, counted in the engines' ledgers and budgets."""
        if not examples:
            raise DataError("measuring the pace needs at least one training example")
        return await measure_pace(
            self.net, self.engine, self.backward, self.options, examples, batch_size
        )
