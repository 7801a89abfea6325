"""Tasks generated here with exact answers and unlimited examples under a seed.

* navigation: do these steps bring you back to the start? (yes / no, balanced)
* ordering: a few objects in a row, told by "directly left of" clues; which is at a place?
* dates: what is the date some days before or after a given day? (multiple choice)
* tweets: is a tweet to an airline positive, negative or neutral? (skewed to negative)
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable

from dlgraph._untrusted import excerpt
from dlgraph._validate import check_int
from dlgraph.data.example import Example
from dlgraph.data.paper import Task
from dlgraph.errors import DataError

MAX_EXAMPLES = 100_000
"""The most examples of one split a generated task makes."""
MAX_REPEATS = 2_000
"""Examples drawn in a row that were all made before: the task has run out of new ones."""
DIRECTIONS = {"forward": (0, 1), "backward": (0, -1), "left": (-1, 0), "right": (1, 0)}
LETTERS = "ABCDEFG"


def _steps(count: int) -> str:
    return f"{count} step" if count == 1 else f"{count} steps"


def navigation_example(rng: random.Random, returns: bool) -> Example:
    """Moves in four directions, always facing forward; balanced yes/no by construction."""
    moves: list[tuple[str, int]] = []
    for _ in range(rng.randint(1, 3)):
        direction = rng.choice(list(DIRECTIONS))
        count = rng.randint(1, 9)
        moves.append((direction, count))
        opposite = {"forward": "backward", "backward": "forward", "left": "right", "right": "left"}[
            direction
        ]
        moves.append((opposite, count))
    if not returns:
        index = rng.randrange(len(moves))
        direction, count = moves[index]
        moves[index] = (direction, count + rng.randint(1, 3))
    rng.shuffle(moves)
    text = " ".join(f"Take {_steps(count)} {direction}." for direction, count in moves)
    question = f"Always face forward. {text} Are you back where you started?\nOptions:\n- Yes\n- No"
    return Example(question, "Yes" if returns else "No")


NAMES = ["apple", "book", "cup", "drum", "egg", "fan", "glove"]
PLACES = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh"]


def ordering_example(rng: random.Random, size: int = 4) -> Example:
    """Objects on a shelf, with enough "directly left of" clues to fix their order."""
    objects = rng.sample(NAMES, size)
    clues = [
        f"The {left} is directly left of the {right}."
        for left, right in zip(objects, objects[1:], strict=False)
    ]
    rng.shuffle(clues)
    place = rng.randrange(size)
    options = sorted(objects)
    listing = "\n".join(f"({LETTERS[i]}) The {name}" for i, name in enumerate(options))
    question = (
        f"On a shelf stand {size} objects in a row: {', '.join(sorted(objects))}. "
        + " ".join(clues)
        + f" Which object is {PLACES[place]} from the left?\nOptions:\n{listing}"
    )
    return Example(question, f"({LETTERS[options.index(objects[place])]})")


def dates_example(rng: random.Random, choices: int = 4) -> Example:
    """Day arithmetic with distractors a day, a week or a month off."""
    start = datetime.date(2000, 1, 1) + datetime.timedelta(days=rng.randrange(365 * 30))
    offset = rng.choice([1, 2, 3, 5, 7, 10, 14, 21, 30])
    later = rng.random() < 0.5
    answer = start + datetime.timedelta(days=offset if later else -offset)
    wrong = {answer + datetime.timedelta(days=d) for d in (-7, -1, 1, 7, 30, -30)}
    options = [answer, *rng.sample(sorted(wrong), choices - 1)]
    rng.shuffle(options)
    listing = "\n".join(f"({LETTERS[i]}) {d:%m/%d/%Y}" for i, d in enumerate(options))
    when = "after" if later else "before"
    question = f"Today is {start:%m/%d/%Y}. What is the date {offset} days {when} today?\nOptions:\n{listing}"
    return Example(question, f"({LETTERS[options.index(answer)]})")


AIRLINES = ["@united", "@delta", "@jetblue", "@southwestair", "@americanair", "@virginamerica"]
CITIES = [
    "Boston",
    "Denver",
    "Chicago",
    "Dallas",
    "Seattle",
    "Miami",
    "Austin",
    "Newark",
    "Phoenix",
]
PRAISE = [
    "loved the crew on my flight",
    "great service all the way",
    "smooth landing and friendly staff",
    "thanks for the free upgrade",
    "best flight I have had in years",
    "arrived early, what a treat",
    "the gate agent was so helpful",
    "comfortable seats and tasty snacks",
    "quick boarding and a kind crew",
    "you made my trip so easy",
]
COMPLAINTS = [
    "lost my bag again",
    "delayed three hours with no update",
    "rude staff at the gate",
    "cancelled my flight and nobody helps",
    "broken seat and a dirty cabin",
    "stuck on the tarmac for two hours",
    "on hold for an hour with customer service",
    "overbooked again and I got bumped",
    "missed my connection because of you",
    "charged me twice for one bag",
]
QUESTIONS = [
    "which terminal does the flight use",
    "is there wifi on the morning flight",
    "do you fly there in winter",
    "what is the baggage limit",
    "can I change my seat online",
    "when does check in open",
    "does the flight have power outlets",
    "how early should I be at the airport",
    "is the lounge open on sundays",
    "can I bring my guitar on board",
]


def tweet_example(rng: random.Random) -> Example:
    """A tweet to an airline: a complaint (about 60%), praise or a plain question (about 20%
    each), as in the airline task of the DLN paper; phrases, places and endings vary."""
    draw = rng.random()
    label, phrases = (
        ("negative", COMPLAINTS)
        if draw < 0.6
        else ("positive", PRAISE)
        if draw < 0.8
        else ("neutral", QUESTIONS)
    )
    phrase = rng.choice(phrases)
    place = rng.choice([f" to {rng.choice(CITIES)}", f" from {rng.choice(CITIES)}", " today", ""])
    ending = "?" if label == "neutral" else rng.choice([".", "!", " #travel", " again."])
    text = f"{rng.choice(AIRLINES)} {phrase}{place}{ending}"
    question = "Is the following tweet positive, negative, or neutral? "
    return Example(f"{question}{text}\nOptions:\n- positive\n- negative\n- neutral", label)


def _navigation(rng: random.Random, index: int) -> Example:
    return navigation_example(rng, returns=index % 2 == 0)


GENERATORS: dict[str, tuple[Callable[[random.Random, int], Example], list[str], str]] = {
    "navigation": (
        _navigation,
        ["yes|Yes", "no|No"],
        "Decide whether the steps lead back to the starting point.",
    ),
    "ordering": (
        lambda rng, _: ordering_example(rng),
        ["a|A", "b|B", "c|C", "d|D"],
        "Work out the order of the objects, then answer.",
    ),
    "dates": (
        lambda rng, _: dates_example(rng),
        ["a|A", "b|B", "c|C", "d|D"],
        "Work out the date.",
    ),
    "tweets": (
        lambda rng, _: tweet_example(rng),
        ["positive|Positive", "negative|Negative", "neutral|Neutral"],
        "Read the following sentence, then choose whether it is positive, negative, or neutral.",
    ),
}


def generate(name: str, count: int, seed: int) -> list[Example]:
    """`count` distinct examples of a generated task; the same seed gives the same ones."""
    if name not in GENERATORS:
        raise DataError(f"unknown generated task {excerpt(name)} (known: {', '.join(GENERATORS)})")
    make = GENERATORS[name][0]
    rng = random.Random(f"{name}:{seed}")
    examples: list[Example] = []
    if count == 0:
        return examples
    seen: set[str] = set()
    repeats = 0
    while len(examples) < count:
        example = make(rng, len(examples))
        if example.input in seen:
            repeats += 1
            if repeats > MAX_REPEATS:
                raise DataError(
                    f"generated task {excerpt(name)}: cannot make {count:,} distinct examples "
                    f"(found {len(examples):,})"
                )
            continue
        repeats = 0
        seen.add(example.input)
        examples.append(example)
    random.Random(f"{name}:{seed}:order").shuffle(examples)
    return examples


def generated_task(
    name: str, train: int = 100, dev: int = 100, test: int = 100, seed: int = 0
) -> Task:
    """Disjoint splits drawn from one seeded stream."""
    for split, count in (("train", train), ("dev", dev), ("test", test)):
        try:
            check_int(split, count, 0, MAX_EXAMPLES)
        except (TypeError, ValueError) as error:
            raise DataError(f"generated task {excerpt(name)}: {error}") from None
    examples = generate(name, train + dev + test, seed)
    _, classes, instruction = GENERATORS[name]
    return Task(
        name,
        examples[:train],
        examples[train : train + dev],
        examples[train + dev :],
        classes,
        instruction,
    )
