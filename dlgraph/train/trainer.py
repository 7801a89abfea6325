"""The variational trainer: one generic step for any DAG of language nodes.

A step reads like micrograd's backward(): a forward pass, then posterior targets for hidden
nodes in reverse topological order, then new prompts for every trainable node, each chosen
by its ELBO. DLN-1 (one node) and DLN-2 (two nodes and a residual edge) are just networks.
The run around the steps (evaluation, checkpoints, logs) is `dlgraph.train.run`; the cost
estimate is `dlgraph.train.estimate`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.data.example import Example, check_dataset
from dlgraph.engine import Engine
from dlgraph.errors import GraphError
from dlgraph.forward import Trace, forward
from dlgraph.network import Network
from dlgraph.train import posterior as posterior_inference
from dlgraph.train.elbo import elbo, example_scores, expectation_terms
from dlgraph.train.estimate import estimate
from dlgraph.train.options import TrainerOptions
from dlgraph.train.posterior import Posterior
from dlgraph.train.proposals import (
    END,
    PromptMemory,
    ProposalRequest,
    candidate_prompts,
    clean_proposal,
    proposal_requests,
)
from dlgraph.train.records import Estimate, FitResult, StepOutcome
from dlgraph.train.run import Run, RunSettings, StepCallback
from dlgraph.train.scorers import AccuracyScorer, LogprobScorer, Scorer


class VariationalTrainer:
    """Learns every trainable prompt of `net` jointly; see ARCHITECTURE.md, "The trainer".

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

    def gold_targets(self, data: Sequence[Example], name: str = "data") -> list[str]:
        """Targets as the output node names them; DataError for one it cannot take."""
        return self.net.node(self.output).targets(data, name)

    def check_data(self, train: Sequence[Example], dev: Sequence[Example]) -> None:
        """Everything about the data that can be known before a call: DataError otherwise."""
        self.gold_targets(check_dataset(train, "train"), "train")
        self.gold_targets(check_dataset(dev, "dev"), "dev")

    # -- one step ----------------------------------------------------------------------------

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
        output = self.net.node(self.output)
        return StepOutcome(
            batch_loss=1.0 - output.accuracy(trace.outputs[self.output], targets[self.output]),
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

        async def propose(request: ProposalRequest) -> str:
            text = await self.engine.generate(
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
            terms = expectation_terms(
                self.net, name, trace, targets, posteriors, self.options.min_weight
            )
            per_example = await example_scores(self.net, name, candidates[name], terms, scorer)
            trust = self.options.trust_region if name == self.output else 0.0
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
        from it, repeating no finished step; `best.json` there is the best network. A spent
        budget ends the run cleanly (``stopped="budget"``). Raises DataError for bad data,
        CheckpointError for a damaged or foreign checkpoint, BackendError for failed calls.
        """
        settings = RunSettings(
            steps=steps, batch_size=batch_size, eval_every=eval_every, patience=patience
        )
        run = Run(
            self,
            train,
            dev,
            settings,
            checkpoint_dir=checkpoint_dir,
            log_path=log_path,
            on_step=on_step,
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
        settings = RunSettings(steps=steps, batch_size=batch_size, eval_every=eval_every)
        return estimate(
            self.net,
            self.options,
            self.trainable_nodes,
            self.engine.backend,
            settings,
            train,
            dev_size,
        )
