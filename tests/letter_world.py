"""A scripted world where prompts matter: tasks on the last letters of words.

Words are consonants except, perhaps, their last letter. A hidden node answers
``letter: c`` for the last letter of word N only under the instruction LAST(N), which only
the proposal step can write; the output node decides from the ``letter:`` lines it reads
(sharper under OUTPUT_KEY). With ``direct=True`` an output node can also learn DIRECT_KEY
and answer from the input alone (a task for DLN-1).
"""

from __future__ import annotations

import math
import random
import re

from dlgraph_sim import ScriptedModel, stable_random

import dlgraph as dg

VOWELS = "aeiou"
CONSONANTS = "bcdfghjklmnpqrstvwxz"
OUTPUT_KEY = "Vowel letters decide the answer."
DIRECT_KEY = "Answer yes when the word ends with a vowel."
PAIR_CLASSES = ["both", "first", "second", "neither"]


def last(n: int) -> str:
    return f"Name the last letter of word {n}."


def first(n: int) -> str:
    return f"Name the first letter of word {n}."


HIDDEN_HINTS = [
    last(1),
    last(2),
    first(1),
    first(2),
    "Think step by step.",
    "Describe the input.",
    "Count the letters.",
]
OUTPUT_HINTS = [
    OUTPUT_KEY,
    "Be careful.",
    "Consider every clue.",
    "Answer briefly.",
    "Read the input twice.",
]


def make_word(rng: random.Random, ends_with_vowel: bool) -> str:
    stem = "".join(rng.choice(CONSONANTS) for _ in range(rng.randint(2, 4)))
    return stem + rng.choice(VOWELS if ends_with_vowel else CONSONANTS)


def single_word_task(count: int, seed: int) -> list[dg.Example]:
    """yes iff the word ends with a vowel; balanced."""
    rng = random.Random(seed)
    return [
        dg.Example(make_word(rng, i % 2 == 0), "yes" if i % 2 == 0 else "no") for i in range(count)
    ]


def word_pair_task(count: int, seed: int) -> list[dg.Example]:
    """Which words end with a vowel: both, first, second or neither."""
    rng = random.Random(seed)
    examples = []
    for i in range(count):
        label = PAIR_CLASSES[i % 4]
        one, two = label in ("both", "first"), label in ("both", "second")
        examples.append(dg.Example(f"{make_word(rng, one)} {make_word(rng, two)}", label))
    return examples


def _words(text: str) -> list[str]:
    match = re.search(r"^Input: (.*)$", text, re.MULTILINE)
    return match.group(1).split() if match else []


def _hidden_output(prompt: str, words: list[str]) -> str:
    for n, word in enumerate(words, start=1):
        if last(n) in prompt:
            return f"letter: {word[-1]}"
        if first(n) in prompt:
            return f"letter: {word[0]}"
    return "I am not sure."


def _features(context: str) -> list[str | None]:
    """The letter reported by each hidden parent line, in order (None: no letter)."""
    found = []
    for line in context.splitlines():
        match = re.match(r"^(\w+): (.*)$", line)
        if match and match.group(1) not in ("Input", "Answer", "Output"):
            letter = re.fullmatch(r"letter: (\w)", match.group(2).strip())
            found.append(letter.group(1) if letter else None)
    return found


class LetterWorld:
    def __init__(self, *, direct: bool = False, pair: bool = False) -> None:
        self.direct = direct
        self.pair = pair

    def model(self, **options: object) -> ScriptedModel:
        return ScriptedModel(
            generate=self.generate, logprob=self.logprob, name="letters", **options
        )

    # generation: forward outputs, posterior samples, proposals
    def generate(self, request: dg.GenerateRequest) -> str:
        if request.phase == "propose":
            if "Verdict: wrong" not in request.prompt:
                return request.prompt.split("[instruction]\n")[1].split("\n[/instruction]")[0]
            hints = OUTPUT_HINTS + ([DIRECT_KEY] if self.direct else [])
            if request.node in self.hidden_names:
                hints = HIDDEN_HINTS
            pick = int(stable_random(request.prompt, request.seed) * len(hints))
            return hints[pick] + "\n[/instruction]"
        if request.phase == "posterior":
            words = _words(request.prompt)
            r = random.Random(f"{request.prompt}|{request.seed}")
            word = r.choice(words)
            return f"letter: {word[-1] if r.random() < 0.6 else r.choice(word)}"
        prompt = request.prompt.split("\n\n")[0]
        return _hidden_output(prompt, _words(request.prompt))

    hidden_names = ("reason", "a", "b")

    # log-probabilities: hidden outputs and class scores
    def logprob(self, request: dg.LogprobRequest) -> float:
        prompt = request.context.split("\n\n")[0]
        target = request.target.strip()
        if request.context.rstrip().endswith("Output:"):
            expected = _hidden_output(prompt, _words(request.context))
            if expected == "I am not sure.":
                return math.log(1 / 30)
            return math.log(0.9) if target == expected else math.log(0.1 / 30)
        return math.log(self.class_probability(prompt, request.context, target.lower()) / 2)

    def class_probability(self, prompt: str, context: str, label: str) -> float:
        sharp = OUTPUT_KEY in prompt
        good, bad = (0.95, 0.05) if sharp else (0.8, 0.2)
        features = _features(context)
        words = _words(context)
        if self.pair:
            probabilities = {}
            for name in PAIR_CLASSES:
                wanted = (name in ("both", "first"), name in ("both", "second"))
                p = 1.0
                for k, want in enumerate(wanted):
                    letter = features[k] if k < len(features) else None
                    p *= 0.5 if letter is None else (good if (letter in VOWELS) == want else bad)
                probabilities[name] = p
            return probabilities[label] / sum(probabilities.values())
        letter = features[0] if features else None
        if letter is None and self.direct and DIRECT_KEY in prompt and words:
            letter = words[0][-1]
            good, bad = 0.9, 0.1
        if letter is None:
            p_yes = 0.3 + 0.4 * stable_random(prompt, context)
        else:
            p_yes = good if letter in VOWELS else bad
        return p_yes if label == "yes" else 1 - p_yes
