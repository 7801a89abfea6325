"""How a candidate is scored: the log-likelihood of a target under a node and a prompt.

`LogprobScorer` asks the node's kind for the exact log-likelihood; `AccuracyScorer`, for
backends without log-probabilities, runs the node and scores a right answer 0, a wrong one the
floor. The posterior and the ELBO use either through the `Scorer` protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import attrs

from dlgraph.backend import Phase
from dlgraph.engine import Engine
from dlgraph.graph import Graph
from dlgraph.nodes import Parameter
from dlgraph.scoring import LOG_FLOOR


class Scorer(Protocol):
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
        ...


@attrs.frozen
class LogprobScorer:
    """Exact log-likelihood, as the node's kind computes it."""

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
        parents = net.parent_values(name, values)
        return await net.node(name).loglik(
            self.engine, parents, target, phase=phase, parameter=parameter
        )


@attrs.frozen
class AccuracyScorer:
    """For backends without log-probs: 0 if the node's greedy output is right, else the floor."""

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
        node = net.node(name)
        output = await node.run(
            self.engine, net.parent_values(name, values), parameter=parameter, phase=phase
        )
        return 0.0 if node.kind.is_correct(output.text, target) else LOG_FLOOR
