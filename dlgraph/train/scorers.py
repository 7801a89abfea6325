"""How a candidate is scored: the log-likelihood of a target under a node and a prompt.

`LogprobScorer` asks the node's kind for the exact log-likelihood; `AccuracyScorer`, for
backends without log-probabilities, runs the node and scores a right answer 0, a wrong one the
floor. The posterior and the ELBO use either through `Scorer`, which also says what one score
costs, so that the step's description counts what the scorer really sends.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import attrs

from dlgraph.backend import Phase
from dlgraph.engine import Engine
from dlgraph.graph import Graph
from dlgraph.nodes import Cost, Kind, LanguageNode, NodeCall, Parameter, Parent
from dlgraph.scoring import LOG_FLOOR


@attrs.frozen
class Scorer(abc.ABC):
    """Scores targets on `engine`, the engine whose model the prompts are for."""

    engine: Engine

    async def loglik(
        self,
        net: Graph,
        name: str,
        values: Mapping[str, str],
        target: str,
        *,
        parameter: Parameter | None = None,
        phase: Phase,
    ) -> float:
        """log p(target | node `name` reading `values`, under `parameter` or its own)."""
        scores = await self.logliks(net, name, values, [target], parameter=parameter, phase=phase)
        return scores[0]

    async def logliks(
        self,
        net: Graph,
        name: str,
        values: Mapping[str, str],
        targets: Sequence[str],
        *,
        parameter: Parameter | None = None,
        phase: Phase,
    ) -> list[float]:
        """`loglik` of each target on the same inputs, in as few calls as `cost` says."""
        call = NodeCall(engine=self.engine, phase=phase, parameter=parameter)
        return await self._scores(net.node(name), net.parent_values(name, values), targets, call)

    @abc.abstractmethod
    async def _scores(
        self, node: LanguageNode, parents: Sequence[Parent], targets: Sequence[str], call: NodeCall
    ) -> list[float]: ...

    @abc.abstractmethod
    def cost(self, kind: Kind, targets: int = 1) -> Cost:
        """What the scores of `targets` targets of a node of this kind on the same inputs
        send."""

    @abc.abstractmethod
    def repeats_run(self, kind: Kind) -> bool:
        """Whether a score sends the requests of running the node on the same inputs (which
        an engine's cache then answers)."""


@attrs.frozen
class LogprobScorer(Scorer):
    """Exact log-likelihood, as the node's kind computes it."""

    async def _scores(
        self, node: LanguageNode, parents: Sequence[Parent], targets: Sequence[str], call: NodeCall
    ) -> list[float]:
        return await node.logliks(parents, targets, call)

    def cost(self, kind: Kind, targets: int = 1) -> Cost:
        return kind.score_cost(self.engine.backend.capabilities, targets)

    def repeats_run(self, kind: Kind) -> bool:
        return kind.score_repeats_run


@attrs.frozen
class AccuracyScorer(Scorer):
    """For backends without log-probs: 0 if the node's greedy output is right, else the floor."""

    async def _scores(
        self, node: LanguageNode, parents: Sequence[Parent], targets: Sequence[str], call: NodeCall
    ) -> list[float]:
        """One run serves every target."""
        output = await node.run(parents, call)
        return [0.0 if node.kind.is_correct(output.text, t) else LOG_FLOOR for t in targets]

    def cost(self, kind: Kind, targets: int = 1) -> Cost:
        return kind.run_cost(self.engine.backend.capabilities)

    def repeats_run(self, kind: Kind) -> bool:
        return True
