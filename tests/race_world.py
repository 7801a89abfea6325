"""A scripted world where each instruction's quality is known: races can be held to the
winner full scoring picks.

A yes/no node answers input ``item N`` (gold: yes for even N) with probability
sigmoid(quality + noise) of the gold answer, where the instruction's quality is given and the
noise, in [-noise, noise], is a stable function of the instruction and the input. Proposals
write the given instructions in turn, one per sample index.
"""

from __future__ import annotations

import math
import re

import attrs
from dlgraph_sim import ScriptedModel, stable_random

import dlgraph as dg

CURRENT = "Answer the question."


def items(count: int, start: int = 0) -> list[dg.Example]:
    return [
        dg.Example(f"item {n}", "yes" if n % 2 == 0 else "no") for n in range(start, start + count)
    ]


def network() -> dg.Network:
    net = dg.Network()
    net.add_node("answer", prompt=CURRENT, classes=["yes|Yes", "no|No"])
    net.add_edge(dg.INPUT, "answer")
    return net


@attrs.frozen
class QualityWorld:
    qualities: dict[str, float]
    """Every instruction's quality, the current one's included; proposals write the others."""
    noise: float = 1.0

    @property
    def proposals(self) -> list[str]:
        return [name for name in self.qualities if name != CURRENT]

    def model(self) -> ScriptedModel:
        return ScriptedModel(generate=self.generate, logprob=self.logprob, name="quality")

    def generate(self, request: dg.GenerateRequest) -> str:
        if request.phase == "propose":
            return self.proposals[request.seed % len(self.proposals)] + "\n[/instruction]"
        return ""

    def p_right(self, instruction: str, item: int) -> float:
        noise = self.noise * (2 * stable_random(instruction, item) - 1)
        return 1 / (1 + math.exp(-(self.qualities.get(instruction, 0.0) + noise)))

    def logprob(self, request: dg.LogprobRequest) -> float:
        instruction = request.context.split("\n\n")[0].strip()
        found = re.search(r"item (\d+)", request.context)
        item = int(found.group(1)) if found else 0
        gold = "yes" if item % 2 == 0 else "no"
        p = self.p_right(instruction, item)
        answer = request.target.strip().lower()
        return math.log((p if answer == gold else 1 - p) / 2)
