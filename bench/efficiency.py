"""Full scoring against scoring that stops once the decision is made, side by side in one run.

    python bench/efficiency.py sim                       # DLN-2 on the simulated server, TPM-limited
    python bench/efficiency.py embedded [--seeds 0 1 2] [--tasks main mpqa trec navigate]
                                        [--modes full one-call decided]

Row kinds (`MODES`): ``full`` is full scoring as it was before this work, exactly:
``stop_when_decided = false``, one log-probability request per verbalizer and one request per
posterior sample (the backend's ``max_continuations = 0`` and ``max_samples = 0``); ``decided``
is the default (races, dev comparisons that stop, a class distribution and an example's
posterior samples in one call each); ``one-call`` (optional, not run unless asked) is full
scoring with one-call classes and samples, so that the table separates what one call saves
(``one-call`` against ``full``) from what stopping when decided saves (``decided`` against
``one-call``).

``embedded`` trains each task in each mode for each seed on the embedded model (Gemma 3 270M):
the main job (examples/tweets.toml), the paper's mpqa and trec (DLN-1, from ../shared/data or
$DLGRAPH_DATA) and DLN-2 on the generated navigation task, with small settings (``--steps``,
``--dev``, ``--test``). Per row, means over the seeds: training calls and tokens (everything
but the test evaluation after), the calls the estimate expected before the run and once the
first step was measured, wall time of the training, best dev, test accuracy after. ``sim`` runs the same DLN-2 training in each mode against the simulated OpenAI-compatible
server (dlgraph-sim) under a tokens-per-minute limit, on a scripted world where prompts matter
(a word's last letter), and prints the wall times.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import statistics
import time
from collections.abc import Sequence

import anyio
from dlgraph_sim import stable_random
from dlgraph_sim.server import ServerConfig, SimModel, SimServer

import dlgraph as dg
from dlgraph.config import RunConfig

MODES = {"full": (False, 0), "one-call": (False, None), "decided": (True, None)}
"""Row label: the value of `stop_when_decided`, and the backend's `max_continuations` and
`max_samples` (0: one request per verbalizer and per sample; None: the backend's default,
every verbalizer, and every sample of a prompt, in one call)."""
DEFAULT_MODES = ["full", "decided"]
"""The issue's comparison: the scoring before this work against the new default."""
TASKS = {
    "main": [],
    "mpqa": ["data.source=paper", "data.task=mpqa"],
    "trec": ["data.source=paper", "data.task=trec"],
    "navigate": [
        "data.task=navigation",
        "network.kind=dln2",
        "network.hidden_max_tokens=24",
        "train.max_demonstrations=0",
    ],
}


# -- what a run spent ----------------------------------------------------------------------


async def train_once(
    net: dg.Network,
    engine: dg.Engine,
    options: dg.TrainerOptions,
    data: tuple[Sequence[dg.Example], Sequence[dg.Example], Sequence[dg.Example]],
    steps: int,
    batch: int,
) -> dict[str, float]:
    """Estimate, train, then evaluate on test: what the training spent, apart."""
    train, dev, test = data
    trainer = dg.VariationalTrainer(net, engine, options)
    estimate = trainer.estimate(steps, batch, train, len(dev))
    after_first: list[int] = []

    def calibrate(record: dg.StepRecord) -> None:
        """The whole run's expected calls once its first step has been measured."""
        if record.step == 1:
            after_first.append(trainer.estimate(steps, batch, train, len(dev)).expected_calls)

    started = time.monotonic()
    result = await trainer.fit(train, dev, steps, batch, on_step=calibrate)
    seconds = time.monotonic() - started
    spent = engine.statistics().total
    test_accuracy = await dg.evaluate(net, engine, test)
    return {
        "calls": spent.calls,
        "tokens": spent.tokens,
        "prior": estimate.expected_calls,
        "expected": after_first[0] if after_first else estimate.expected_calls,
        "at_most": estimate.calls,
        "seconds": seconds,
        "dev": float(result.best_dev_score or 0.0),
        "test": float(test_accuracy),
    }


def table(rows: dict[tuple[str, str], list[dict[str, float]]]) -> str:
    lines = [
        "| task | scoring | training calls | tokens | expected: prior, after step 1 | wall s | best dev | test after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (task, mode), runs in rows.items():

        def mean(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.mean(run[key] for run in runs)

        lines.append(
            f"| {task} | {mode} | {mean('calls'):,.0f} | {mean('tokens'):,.0f} | "
            f"{mean('prior'):,.0f}, {mean('expected'):,.0f} | {mean('seconds'):.0f} | {mean('dev'):.3f} | "
            f"{mean('test'):.3f} |"
        )
    return "\n".join(lines)


PAIRS = [
    ("decided", "full", "the new default against full scoring"),
    ("one-call", "full", "what one-call classes save"),
    ("decided", "one-call", "what stopping when decided saves"),
]
"""(row, baseline, what their ratio shows), for the rows a run has."""


def ratios(rows: dict[tuple[str, str], list[dict[str, float]]]) -> str:
    """Per task and pair of row kinds: calls and tokens of one over the other's, test
    difference, and how far the expected calls were from the measured ones."""
    lines = []
    for task in dict.fromkeys(task for task, _ in rows):
        for mode, baseline, shows in PAIRS:
            new, old = rows.get((task, mode)), rows.get((task, baseline))
            if not new or not old:
                continue

            def total(runs: list[dict[str, float]], key: str) -> float:
                return sum(run[key] for run in runs)

            def test(runs: list[dict[str, float]]) -> float:
                return statistics.mean(run["test"] for run in runs)

            error = [abs(r["expected"] - r["calls"]) / r["calls"] for r in new]
            lines.append(
                f"{task}, {mode} / {baseline} ({shows}): calls "
                f"{total(new, 'calls') / total(old, 'calls'):.2f}x, tokens "
                f"{total(new, 'tokens') / total(old, 'tokens'):.2f}x, test "
                f"{test(new) - test(old):+.3f}, "
                f"expected calls (after step 1) off by {max(error):.0%} at most"
            )
    return "\n".join(lines)


# -- the embedded model --------------------------------------------------------------------


async def embedded(args: argparse.Namespace) -> None:
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    for task in args.tasks:
        for seed in args.seeds:
            for mode in args.modes:
                decided, continuations = MODES[mode]
                settings = [
                    *TASKS[task],
                    f"data.dev={args.dev}",
                    f"data.test={args.test}",
                    f"train.steps={args.steps}",
                    f"train.stop_when_decided={str(decided).lower()}",
                    f"train.seed={seed}",
                ]
                if continuations is not None:
                    settings.append(f"backend.options.max_continuations={continuations}")
                    settings.append(f"backend.options.max_samples={continuations}")
                config = RunConfig.read(args.config, settings)
                data = config.task()
                net = config.build_network(data)
                async with config.engine() as engine:
                    run = await train_once(
                        net,
                        engine,
                        config.options,
                        (data.train, data.dev[: args.dev], data.test[: args.test]),
                        config.schedule.steps,
                        config.schedule.batch_size,
                    )
                rows.setdefault((task, mode), []).append(run)
                print(task, mode, seed, {k: round(v, 3) for k, v in run.items()}, flush=True)
    print(table(rows))
    print(ratios(rows))


# -- the simulated server ------------------------------------------------------------------

VOWELS, CONSONANTS = "aeiou", "bcdfghjklmnpqrstvwxz"
LAST = "Name the last letter of the word."
SHARP = "Vowels mean yes."
HIDDEN_HINTS = [LAST, LAST, LAST, "Describe the word.", "Count the letters.", "Think step."]
START_HIDDEN = "Read the input."
START_OUTPUT = "Answer the question."
SURE = {SHARP: 0.97, START_OUTPUT: 0.8, "Read the input twice.": 0.75, "Be careful.": 0.65}
"""How surely each answer instruction follows the reasoning's letter."""
OUTPUT_HINTS = [*SURE, "Answer briefly."]


def words(count: int, seed: int) -> list[dg.Example]:
    """Does the word end with a vowel? Balanced."""
    rng = random.Random(seed)
    examples = []
    for i in range(count):
        stem = "".join(rng.choice(CONSONANTS) for _ in range(rng.randint(2, 4)))
        last = rng.choice(VOWELS if i % 2 == 0 else CONSONANTS)
        examples.append(dg.Example(stem + last, "yes" if i % 2 == 0 else "no"))
    return examples


def _word(text: str) -> str:
    found = re.findall(r"^Input: (\w+)$", text, re.MULTILINE)
    return found[-1] if found else ""


def _hidden_output(instruction: str, word: str) -> str:
    return f" letter: {word[-1]}" if LAST in instruction and word else " I am not sure."


def complete(prompt: str, max_tokens: int, temperature: float, seed: int) -> str:
    """Proposals name a hint for the node whose instruction they show (the instruction to
    name the last letter more often than the others); a posterior sample is
    the last letter more often than not; a run follows the instruction."""
    if "[instruction]" in prompt:
        shown = prompt.split("[instruction]\n")[1].split("\n[/instruction]")[0]
        hints = HIDDEN_HINTS if shown in (START_HIDDEN, *HIDDEN_HINTS) else OUTPUT_HINTS
        return " " + hints[int(stable_random(prompt, seed) * len(hints))] + "\n[/instruction]"
    word = _word(prompt) or "x"
    if "Better output:" in prompt:
        r = random.Random(f"{prompt}|{seed}")
        return f" letter: {word[-1] if r.random() < 0.6 else r.choice(word)}"
    return _hidden_output(prompt.split("\n\n")[0], word)


def token_logprob(prefix: str, token: str) -> float:
    """A yes/no answer from the reasoning's letter, as surely as the instruction says (most
    under SHARP), else a guess that varies with the instruction; a reasoning output likely
    when it is what the instruction gives, most under LAST."""
    instruction = prefix.split("\n\n")[0]
    if prefix.rstrip().endswith("Answer:") and token.strip().lower() in ("yes", "no"):
        letter = re.search(r"^reason: letter: (\w)$", prefix, re.MULTILINE)
        if letter:
            sure = SURE.get(instruction, 0.55)
            p_yes = sure if letter.group(1) in VOWELS else 1 - sure
        else:
            p_yes = 0.25 + 0.5 * stable_random(instruction, _word(prefix))
        return math.log((p_yes if token.strip().lower() == "yes" else 1 - p_yes) / 2)
    if "\nOutput:" in prefix:
        written = prefix.rsplit("\nOutput:", 1)[1] + token
        expected = _hidden_output(instruction, _word(prefix))
        sure = 0.8 if LAST in instruction else 0.2 + 0.6 * stable_random(instruction)
        return math.log(sure) / 3 if expected.startswith(written) else math.log(0.75)
    return -(0.05 + 4.0 * stable_random(prefix[-64:], token))


def dln2() -> dg.Network:
    net = dg.Network()
    net.add_node("reason", prompt=START_HIDDEN, max_tokens=8)
    net.add_node("answer", prompt=START_OUTPUT, classes=["yes|Yes", "no|No"])
    net.add_edge(dg.INPUT, "reason")
    net.add_edge(dg.INPUT, "answer")
    net.add_edge("reason", "answer")
    return net


async def simulated(args: argparse.Namespace) -> None:
    data = (words(60, 1), words(30, 2), words(60, 3))
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    for seed in args.seeds:
        for mode in args.modes:
            decided, continuations = MODES[mode]
            server = SimServer(ServerConfig(tpm=args.tpm), SimModel(complete, token_logprob))
            async with server:
                backend = dg.connect(
                    "openai",
                    base_url=server.url,
                    model="sim-1",
                    profile="sim",
                    max_continuations=continuations,
                    max_samples=continuations,
                )
                async with dg.Engine(backend, tpm=args.tpm) as engine:
                    options = dg.TrainerOptions(
                        num_prompt_samples=4,
                        num_hidden_samples=2,
                        max_demonstrations=0,
                        proposal_max_tokens=16,
                        stop_when_decided=decided,
                        seed=seed,
                    )
                    run = await train_once(dln2(), engine, options, data, args.steps, 10)
            rows.setdefault((f"dln2 sim, tpm {args.tpm:,}", mode), []).append(run)
            print(mode, seed, {k: round(v, 3) for k, v in run.items()}, flush=True)
    print(table(rows))
    print(ratios(rows))
    seconds = {mode: sum(run["seconds"] for run in runs) for (_, mode), runs in rows.items()}
    for mode in seconds:
        if mode != "decided" and "decided" in seconds:
            print(f"wall time: {mode} {seconds[mode] / seconds['decided']:.2f}x the new default's")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("where", choices=("embedded", "sim"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--modes", nargs="+", default=DEFAULT_MODES, choices=list(MODES))
    parser.add_argument("--config", default="examples/tweets.toml")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dev", type=int, default=30)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--tpm", type=int, default=200_000)
    args = parser.parse_args()
    anyio.run(embedded if args.where == "embedded" else simulated, args)


if __name__ == "__main__":
    main()
