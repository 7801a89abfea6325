"""The DLN paper's classification tasks on the embedded model (Gemma 3 270M), one table.

    python bench/paper_tasks.py [--tasks navigate subj ...] [--seeds 0 1 2] [--test 100]

Per task: the majority class of the test split; the paper's instruction zero-shot; random
4-shot in-context learning (the paper's instruction with 4 random training examples, mean of
3 draws: the paper's ICL baseline); DLN-1 learning instructions only; DLN-1 with the defaults
(instructions and demonstrations); and DLN-2 (a reasoning node before the answer) on the tasks
where reasoning can help. Trained runs use the reference train split, select on the first
--dev examples of the reference dev split, and are scored on the first --test examples of the
reference test split. Calls and wall time per run. Rows are appended to --out as JSON lines,
and a re-run skips the runs already there. Needs ../shared/data or $DLGRAPH_DATA.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import time
from pathlib import Path

import anyio

import dlgraph as dg
from dlgraph.data import Task, load_task, task_names
from dlgraph.scoring import matching_class

REASONING = {"navigate", "date_understanding", "logical_deduction_seven_objects"}
METHODS = ("zero-shot", "4-shot", "dln1-instructions", "dln1", "dln2")


def majority(task: Task, test: list[dg.Example]) -> float:
    counts = collections.Counter(matching_class(str(e.target), task.classes or []) for e in test)
    return max(counts.values()) / len(test)


def network(task: Task, kind: str, demonstrations: list[dg.Demonstration] = ()) -> dg.Network:
    net = dg.Network()
    if kind == "dln2":
        net.add_node(
            "reason", prompt="Think about the question step by step.", max_tokens=48, stop=["\n\n"]
        )
        net.add_edge(dg.INPUT, "reason")
    net.add_node(
        "answer", prompt=task.instruction, classes=task.classes, demonstrations=demonstrations
    )
    net.add_edge(dg.INPUT, "answer")
    if kind == "dln2":
        net.add_edge("reason", "answer")
    return net


async def run(task: Task, method: str, seed: int, args: argparse.Namespace) -> dict[str, object]:
    test, dev = task.test[: args.test], task.dev[: args.dev]
    started = time.monotonic()
    async with dg.Engine(dg.connect("llamacpp")) as engine:
        if method in ("zero-shot", "4-shot"):
            shown = []
            if method == "4-shot":
                drawn = random.Random(seed).sample(task.train, 4)
                shown = [dg.Demonstration(f"Input: {e.input}", str(e.target)) for e in drawn]
            net = network(task, "dln1", shown)
            dev_best = None
        else:
            net = network(task, "dln2" if method == "dln2" else "dln1")
            trainer = dg.VariationalTrainer(
                net,
                engine,
                num_prompt_samples=args.prompts,
                proposal_max_tokens=80,
                max_demonstrations=0 if method == "dln1-instructions" else 4,
                seed=seed,
            )
            result = await trainer.fit(task.train, dev, steps=args.steps, batch_size=args.batch)
            dev_best = result.best_dev_score
        accuracy = await dg.evaluate(net, engine, test)
        calls = engine.statistics().total.calls
    return {
        "task": task.name,
        "method": method,
        "seed": seed,
        "test": float(accuracy),
        "dev_best": None if dev_best is None else float(dev_best),
        "majority": majority(task, test),
        "demonstrations": len(net.node("answer").demonstrations),
        "prompt": net.prompts()["answer"],
        "calls": calls,
        "seconds": round(time.monotonic() - started),
    }


def table(rows: list[dict[str, object]], tasks: list[str]) -> str:
    lines = [
        "| task | majority | 0-shot | 4-shot ICL (3 draws) | DLN-1 instructions | DLN-1 | DLN-2 | DLN-1 calls, s per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in tasks:
        mine = [r for r in rows if r["task"] == name]
        if not mine:
            continue

        def cell(method: str, mine: list[dict[str, object]] = mine) -> str:
            values = [float(r["test"]) for r in mine if r["method"] == method]  # type: ignore[arg-type]
            if not values:
                return "–"
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            return f"{statistics.mean(values):.3f}{spread}"

        dln1 = [r for r in mine if r["method"] == "dln1"]
        cost = (
            f"{statistics.mean(int(r['calls']) for r in dln1):,.0f}, {statistics.mean(int(r['seconds']) for r in dln1):.0f}"  # type: ignore[call-overload]
            if dln1
            else "–"
        )
        lines.append(
            f"| {name} | {float(mine[0]['majority']):.3f} | {cell('zero-shot')} | {cell('4-shot')} | "  # type: ignore[arg-type]
            f"{cell('dln1-instructions')} | {cell('dln1')} | {cell('dln2')} | {cost} |"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--dev", type=int, default=40)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--out", default="runs/paper_tasks.jsonl")
    args = parser.parse_args()
    names = args.tasks or [n for n in task_names() if load_task(n).classes]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {(r["task"], r["method"], r["seed"]) for r in rows}
    for name in names:
        task = load_task(name)
        for method in args.methods:
            if method == "dln2" and name not in REASONING:
                continue
            for seed in args.seeds if method != "zero-shot" else [0]:
                if (name, method, seed) in done:
                    continue
                row = await run(task, method, seed, args)
                rows.append(row)
                with open(out, "a") as stream:
                    stream.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print()
    print(table(rows, names))


if __name__ == "__main__":
    anyio.run(main)
