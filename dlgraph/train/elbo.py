"""Scoring candidate prompts: expectations over posterior candidates, the ELBO, and the
step's score phase, which scores every candidate of every trained node.

ELBO(π) for node v is the mean over examples of Σ_k w_k log p(target_k | inputs_k, π):
for an output node the targets are the gold answers and the inputs range over the aligned
posterior candidates of its hidden parents; for a hidden node the inputs are the forward
values and the targets range over its own posterior candidates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.graph import Graph
from dlgraph.nodes import Cost, Parameter
from dlgraph.train.candidates import shown_examples
from dlgraph.train.options import TrainerOptions
from dlgraph.train.posterior import posterior_size
from dlgraph.train.race import Race
from dlgraph.train.step import Probe, Scores, Sizes, StandIn, StepSetup, StepState
from dlgraph.train.waves import Calls, Count, Wave, action, wave


@attrs.frozen
class Term:
    """One weighted (inputs, target) pair of an example's expectation."""

    values: Mapping[str, str]
    target: str
    weight: float


def prune(terms: Sequence[Term], min_weight: float) -> list[Term]:
    """Drop terms lighter than `min_weight` (keeping at least the heaviest) and renormalise."""
    kept = [term for term in terms if term.weight >= min_weight] or [
        max(terms, key=lambda t: t.weight)
    ]
    total = sum(term.weight for term in kept)
    return [attrs.evolve(term, weight=term.weight / total) for term in kept]


def expectation_terms(
    net: Graph, name: str, state: StepState, min_weight: float
) -> list[list[Term]]:
    """Each example's weighted (inputs, target) pairs for scoring node `name`.

    A hidden node's expectation runs over its own posterior candidates, its inputs at their
    forward values. An output node's runs over its hidden parents' candidates, aligned: the
    k-th candidates of all hidden parents go together, with the product of their weights (a
    shorter candidate set wraps around).
    """
    trace, posteriors = state.trace, state.posteriors
    terms = []
    for i in range(len(trace)):
        if name in posteriors:
            own = posteriors[name]
            example = [
                Term(trace.values(i), c, w)
                for c, w in zip(own.candidates[i], own.weights[i], strict=True)
            ]
        else:
            hidden = [p for p in net.parents(name) if p in posteriors]
            size = max((len(posteriors[p].candidates[i]) for p in hidden), default=1)
            example = []
            for k in range(size):
                values, weight = trace.values(i), 1.0
                for p in hidden:
                    candidates, weights = posteriors[p].candidates[i], posteriors[p].weights[i]
                    values[p] = candidates[k % len(candidates)]
                    weight *= weights[k % len(weights)]
                example.append(Term(values, state.targets[name][i], weight))
        terms.append(prune(example, min_weight))
    return terms


def term_count(net: Graph, name: str, options: TrainerOptions) -> int:
    """Terms per example of node `name`'s expectation, before pruning: a hidden node's own
    posterior candidates, an output node's aligned ones of its hidden parents (as many as
    the largest set)."""
    hidden = net.hidden_nodes()
    if name in hidden:
        return posterior_size(net, name, options)
    parents = [p for p in net.parents(name) if p in hidden]
    return max((posterior_size(net, p, options) for p in parents), default=1)


@attrs.frozen
class ScoreJob:
    """Weighted terms of one example that share their inputs, scored under one candidate in
    one `Scorer.logliks` (a hidden node's own posterior candidates; an output node's terms
    each read other inputs, one per job)."""

    candidate: int
    example: int
    terms: tuple[Term, ...]


def score_jobs(
    terms: Sequence[Sequence[Term]],
    excluded: Sequence[frozenset[int]],
    candidates: Iterable[int],
    examples: Iterable[int],
) -> list[ScoreJob]:
    """The candidates' terms on the examples but those a candidate's own demonstrations
    show (scoring it there would reward copying), those with the same inputs together."""
    chosen = list(examples)
    return [
        ScoreJob(c, i, group)
        for c in candidates
        for i in chosen
        if i not in excluded[c]
        for group in _same_inputs(terms[i])
    ]


def _same_inputs(terms: Sequence[Term]) -> list[tuple[Term, ...]]:
    """Runs of consecutive terms reading the same inputs."""
    groups: list[list[Term]] = []
    for term in terms:
        if groups and groups[-1][0].values == term.values:
            groups[-1].append(term)
        else:
            groups.append([term])
    return [tuple(group) for group in groups]


def shares_inputs(net: Graph, name: str) -> bool:
    """Whether the terms of each example's expectation of node `name` read the same inputs
    (a hidden node's: its own posterior candidates after its forward inputs), so that one
    `Scorer.logliks` scores them all."""
    return name in net.hidden_nodes()


def add_scores(
    scores: list[list[float | None]], jobs: Sequence[ScoreJob], weighted: Sequence[float]
) -> None:
    """Add each job's weighted score to its candidate's score on its example (None until
    the first of that example's terms is scored)."""
    for job, value in zip(jobs, weighted, strict=True):
        scores[job.candidate][job.example] = (scores[job.candidate][job.example] or 0.0) + value


def utilities(
    scores: Sequence[Sequence[float | None]], trust_region: float
) -> list[list[float | None]]:
    """Each candidate's per-example contribution to its ELBO: its score, less the trust
    region's charge for what it loses against the current one (candidate 0) there."""
    current = scores[0]
    return [
        [
            s if s is None or c is None else s - trust_region * max(0.0, c - s)
            for s, c in zip(candidate, current, strict=True)
        ]
        for candidate in scores
    ]


def elbo(scores: Sequence[Sequence[float | None]], trust_region: float) -> list[float]:
    """Mean score of each candidate over the examples it was scored on; candidate 0 is the
    current one.

    With a trust region, a candidate pays `trust_region` times its mean loss of
    log-likelihood against the current one, over the examples both were scored on.
    """
    current = scores[0]
    results = []
    for candidate in scores:
        own = [s for s in candidate if s is not None]
        both = [
            (c, s)
            for c, s in zip(current, candidate, strict=True)
            if c is not None and s is not None
        ]
        loss = sum(max(0.0, c - s) for c, s in both) / len(both) if both else 0.0
        results.append(sum(own) / len(own) - trust_region * loss if own else float("-inf"))
    return results


@attrs.frozen
class ScorePhase:
    """Every candidate's ELBO, of every trained node, in one wave on the forward engine."""

    setup: StepSetup

    async def run(self, state: StepState) -> None:
        names = list(state.candidates)
        count = sum(map(len, state.candidates.values()))
        with self.setup.engine.tracer.span("score", candidates=count):
            scored = await map_concurrently(lambda name: self._elbos(name, state), names)
        state.scored = dict(zip(names, scored, strict=True))

    async def _elbos(self, name: str, state: StepState) -> list[tuple[Parameter, float]]:
        """Node `name`'s candidates still in the race at its end with their ELBOs (the
        current one first, always scored in full); the state keeps the calls each could have
        sent and sent, which is what the step reports."""
        setup = self.setup
        candidates = state.candidates[name]
        terms = expectation_terms(setup.net, name, state, setup.options.min_weight)
        excluded = [shown_examples(setup.net, name, c, state) for c in candidates]
        trust = setup.options.trust_region if name in setup.net.output_nodes() else 0.0
        race = Race.of(setup.options)
        if not candidates:  # none fitted the context window
            state.score_counts[name] = state.score_sent[name] = []
            return []
        scores: list[list[float | None]] = [[None] * state.examples for _ in candidates]
        sent = [0] * len(candidates)
        alive = list(range(len(candidates)))
        kind = setup.net.node(name).kind

        def cost(job: ScoreJob) -> Cost:
            return setup.scorer.cost(kind, len(job.terms))

        async def score(job: ScoreJob) -> float:
            values = job.terms[0].values
            logliks = await setup.scorer.logliks(
                setup.net,
                name,
                values,
                [term.target for term in job.terms],
                parameter=candidates[job.candidate],
                phase="score",
            )
            return sum(t.weight * loglik for t, loglik in zip(job.terms, logliks, strict=True))

        rounds = race.rounds(state.examples)
        for number, examples in enumerate(rounds, 1):
            jobs = score_jobs(terms, excluded, alive, examples)
            add_scores(scores, jobs, await map_concurrently(score, jobs))
            for job in jobs:
                sent[job.candidate] += cost(job).expected
            halve = number < len(rounds)
            alive = race.survivors(utilities(scores, trust), alive, halve=halve)
        state.score_counts[name] = [0] * len(candidates)
        for job in score_jobs(terms, excluded, range(len(candidates)), range(state.examples)):
            state.score_counts[name][job.candidate] += cost(job).calls
        state.score_sent[name] = sent
        elbos = elbo(scores, trust)
        return [(candidates[c], elbos[c]) for c in alive]

    def waves(self, sizes: Sizes) -> list[Wave]:
        """Every trained node's scores together, on the forward engine."""
        return wave(False, [self._calls(name, sizes.scores(name)) for name in self.setup.trainable])

    def _calls(self, name: str, scores: Scores) -> Calls:
        """A node's score calls: the current parameter's are expected from the cache when
        an earlier phase asked them (`current_known`)."""
        cost = self.setup.scorer.cost(self.setup.net.node(name).kind)
        current = scores.current
        if self.current_known(name):
            current = Count(current.calls, 0)
        return Calls(name, "score", action(cost), current + scores.others)

    def example_cost(self, name: str, terms: int) -> Cost:
        """What scoring one candidate of node `name` on one example's `terms` terms sends:
        all at once when they read the same inputs (`shares_inputs`), else one score each."""
        setup = self.setup
        kind = setup.net.node(name).kind
        if shares_inputs(setup.net, name):
            return setup.scorer.cost(kind, terms)
        cost = setup.scorer.cost(kind)
        return Cost(terms * cost.calls, cost.writes, expected=terms * cost.expected)

    def current_known(self, name: str) -> bool:
        """Whether the forward engine's cache answers the current parameter's scores: they
        send what the forward pass sent (its expectation runs over the forward values alone
        and a score repeats a run; a hidden class node's over its classes, which its run
        read), or what the posterior's evidence scored (a hidden node's prior over its own
        candidates; an output node's likelihood with its one hidden parent's candidates as
        inputs)."""
        setup = self.setup
        net, options = setup.net, setup.options
        if not setup.cached:
            return False
        repeats = setup.scorer.repeats_run(net.node(name).kind)
        if term_count(net, name, options) == 1:
            return repeats
        if name in net.hidden_nodes():
            return options.posterior_prior or repeats
        hidden = [p for p in net.parents(name) if p in net.hidden_nodes()]
        return len(hidden) == 1 and options.posterior_likelihood

    def probe(self, wave: Wave, stand_in: StandIn) -> Probe:
        """One score of the wave's first node, at its own parameter, on a stand-in batch."""
        setup, name = self.setup, wave.parts[0].node

        async def one(tag: int) -> int:
            state = stand_in(tag)
            values, target = state.trace.values(0), state.targets[name][0]
            await setup.scorer.loglik(setup.net, name, values, target, phase="score")
            return setup.scorer.cost(setup.net.node(name).kind).expected

        return one
