"""Scripted worlds where only demonstrations teach, and where two heads answer.

* `SecretWorld`: the label of a word follows a secret rule no instruction states. Like a base
  model learning in context, a class node answers by the rule only when its prompt shows
  demonstrations of both labels that all follow the rule; otherwise it guesses.
* `RelayWorld`: a hidden node must name a secret colour of the word, which it does only when
  its demonstrations show colours that all follow the secret rule; the output node answers yes
  exactly when it reads "colour: red". Only the posterior can reveal which colour each training
  word has (through the output node's gold answers), so the hidden node can learn its
  demonstrations only through the posterior.
* `TwoHeads`: two class nodes read the same input; each answers well only under its own key
  instruction, which only proposals write.
"""

from __future__ import annotations

import math
import random
import re

from dlgraph_sim import ScriptedModel, stable_random

import dlgraph as dg

LETTERS = "bcdfghjklmnpqrstvwxz"


def secret(word: str) -> bool:
    """The rule no instruction states: the first letter is in the first half of LETTERS."""
    return word[0] in LETTERS[:10]


def words(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    found: list[str] = []
    while len(found) < count:
        want = len(found) % 2 == 0
        word = "".join(rng.choice(LETTERS) for _ in range(4))
        if secret(word) == want and word not in found:
            found.append(word)
    return found


def secret_task(count: int, seed: int) -> list[dg.Example]:
    return [dg.Example(w, "yes" if secret(w) else "no") for w in words(count, seed)]


_SHOWN = re.compile(r"^Input: (\w+)\n(?:Answer|Output): (.+)$", re.MULTILINE)


def shown(context: str) -> list[tuple[str, str]]:
    """The demonstrations in a rendered prompt: (word, answer) pairs, the query excluded."""
    return [(word, answer.strip()) for word, answer in _SHOWN.findall(context)]


def query(context: str) -> str:
    return re.findall(r"^Input: (\w+)\n(?:Answer|Output):\s*$", context, re.MULTILINE)[-1]


def follows(pairs: list[tuple[str, str]], label: object) -> bool:
    """Demonstrations reveal a rule when they show at least two examples, both answers, and
    every answer follows the rule."""
    answers = {answer for _, answer in pairs}
    return len(pairs) >= 2 and len(answers) == 2 and all(a == label(w) for w, a in pairs)


def _proposal(request: dg.GenerateRequest, hints: list[str]) -> str:
    pick = int(stable_random(request.prompt, request.seed) * len(hints))
    return hints[pick] + "\n[/instruction]"


class SecretWorld:
    hints = ["Look at the word.", "Answer yes or no.", "Think about the letters."]

    def model(self, **options: object) -> ScriptedModel:
        return ScriptedModel(generate=self.generate, logprob=self.logprob, name="secret", **options)

    def generate(self, request: dg.GenerateRequest) -> str:
        return _proposal(request, self.hints) if request.phase == "propose" else ""

    def logprob(self, request: dg.LogprobRequest) -> float:
        word = query(request.context)
        if follows(shown(request.context), lambda w: "yes" if secret(w) else "no"):
            p_yes = 0.9 if secret(word) else 0.1
        else:
            p_yes = 0.5
        p = p_yes if request.target.strip().lower() == "yes" else 1 - p_yes
        return math.log(p / 2)


def colour(word: str) -> str:
    return "red" if secret(word) else "blue"


class RelayWorld:
    hints = ["Name the colour.", "Describe the word.", "Think step by step."]

    def model(self, **options: object) -> ScriptedModel:
        return ScriptedModel(generate=self.generate, logprob=self.logprob, name="relay", **options)

    def generate(self, request: dg.GenerateRequest) -> str:
        if request.phase == "propose":
            return _proposal(request, self.hints)
        if request.phase == "posterior":
            r = random.Random(f"{request.prompt}|{request.seed}")
            return f"colour: {r.choice(['red', 'blue'])}"
        return self.hidden_output(request.prompt)

    def hidden_output(self, context: str) -> str:
        pairs = shown(context)
        if follows(pairs, lambda w: f"colour: {colour(w)}"):
            return f"colour: {colour(query(context))}"
        return "colour: unknown"

    def logprob(self, request: dg.LogprobRequest) -> float:
        target = request.target.strip()
        if request.context.rstrip().endswith("Output:"):  # the hidden node's own likelihood
            own = self.hidden_output(request.context)
            return math.log(0.2) if target == own else math.log(0.15)  # a weak prior
        line = re.findall(r"^reason: (.*)$", request.context, re.MULTILINE)[-1]
        p_yes = {"colour: red": 0.95, "colour: blue": 0.05}.get(line.strip(), 0.5)
        p = p_yes if target.lower() == "yes" else 1 - p_yes
        return math.log(p / 2)


FIRST_KEY = "Judge the first word."
SECOND_KEY = "Judge the second word."


def pair_task(count: int, seed: int) -> list[dg.Example]:
    rng = random.Random(seed)
    examples = []
    for i in range(count):
        one, two = i % 2 == 0, i % 4 < 2
        first = "".join(rng.choice(LETTERS) for _ in range(3)) + ("a" if one else "k")
        second = "".join(rng.choice(LETTERS) for _ in range(3)) + ("e" if two else "t")
        target = {"first": "yes" if one else "no", "second": "yes" if two else "no"}
        examples.append(dg.Example(f"{first} {second}", target))
    return examples


class TwoHeads:
    hints = [FIRST_KEY, SECOND_KEY, "Be careful.", "Read twice."]

    def model(self, **options: object) -> ScriptedModel:
        return ScriptedModel(generate=self.generate, logprob=self.logprob, name="heads", **options)

    def generate(self, request: dg.GenerateRequest) -> str:
        return _proposal(request, self.hints) if request.phase == "propose" else ""

    def logprob(self, request: dg.LogprobRequest) -> float:
        prompt = request.context.split("\n\n")[0]
        first, second = re.findall(r"^Input: (\w+) (\w+)$", request.context, re.MULTILINE)[-1]
        key = {FIRST_KEY: first, SECOND_KEY: second}.get(prompt)
        p_yes = (0.9 if key[-1] in "ae" else 0.1) if key else 0.5
        p = p_yes if request.target.strip().lower() == "yes" else 1 - p_yes
        return math.log(p / 2)
