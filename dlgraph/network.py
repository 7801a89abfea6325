"""The network users build, save, load and run: a `Graph` of language nodes that can run on an
engine (its forward pass is `dlgraph.forward`)."""

from __future__ import annotations

from collections.abc import Sequence

from dlgraph.backend import Phase
from dlgraph.engine import Engine
from dlgraph.forward import Trace, forward
from dlgraph.graph import Graph


class Network(Graph):
    """A DAG of language nodes fed by INPUT (structure, validation and formats: `Graph`)."""

    async def forward(
        self, engine: Engine, xs: Sequence[str], *, phase: Phase = "forward"
    ) -> Trace:
        """Run every node on every input; see `dlgraph.forward.forward`."""
        return await forward(self, engine, xs, phase=phase)

    async def predict(self, engine: Engine, xs: Sequence[str]) -> list[str] | list[dict[str, str]]:
        """One answer per input: the output node's, or, when the network has several output
        nodes, a mapping from each output's name to its answer."""
        trace = await self.forward(engine, xs, phase="eval")
        outputs = self.output_nodes()
        if len(outputs) == 1:
            return list(trace.outputs[outputs[0]])
        return [{name: trace.outputs[name][i] for name in outputs} for i in range(len(trace))]
