"""DLN-1 with the embedded model on tasks of the DLN paper: test accuracy before and after.

    python bench/paper_tasks.py --tasks navigate subj trec --seeds 0 1 2

Trains on the reference train split, selects on the first --dev examples of the reference dev
split (never on test), and reports accuracy on the full reference test split next to the
majority-class rate. Needs ../shared/data or $DLGRAPH_DATA.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from pathlib import Path

import anyio

import dlgraph as dg
from dlgraph.data import load_task
from dlgraph.scoring import matching_class


def majority(task: dg.data.Task) -> float:
    counts = collections.Counter(matching_class(e.target, task.classes or []) for e in task.test)
    return max(counts.values()) / len(task.test)


async def run(name: str, seed: int, args: argparse.Namespace) -> dict[str, object]:
    task = load_task(name)
    dev = task.dev[: args.dev]
    net = dg.Network()
    net.add_node("answer", prompt=task.instruction, classes=task.classes, calibrate=args.calibrate)
    net.add_edge(dg.INPUT, "answer")
    started = time.monotonic()
    async with dg.Engine(dg.connect("llamacpp")) as engine:
        before = await dg.evaluate(net, engine, task.test)
        trainer = dg.VariationalTrainer(
            net, engine, num_prompt_samples=args.prompts, proposal_max_tokens=80, seed=seed
        )
        result = await trainer.fit(task.train, dev, steps=args.steps, batch_size=args.batch)
        after = await dg.evaluate(net, engine, task.test)
        calls = engine.statistics().total.calls
    return {
        "task": name,
        "seed": seed,
        "calibrate": args.calibrate,
        "before": before,
        "after": after,
        "majority": majority(task),
        "dev_before": result.initial_dev_accuracy,
        "dev_best": result.best_dev_accuracy,
        "prompt": net.prompts()["answer"],
        "calls": calls,
        "seconds": round(time.monotonic() - started),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", nargs="+", default=["navigate", "subj", "trec"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--dev", type=int, default=60)
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="calibrate class scores against a content-free input",
    )
    parser.add_argument("--out", default="runs/paper_tasks.jsonl")
    args = parser.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.tasks:
        for seed in args.seeds:
            row = await run(name, seed, args)
            rows.append(row)
            with open(args.out, "a") as stream:
                stream.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(
        f"\n| task | calibrated | majority | dev before | dev best | test before | test after (mean ± sd over {len(args.seeds)} seeds) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.tasks:
        mine = [r for r in rows if r["task"] == name]
        after = [float(r["after"]) for r in mine]
        spread = statistics.stdev(after) if len(after) > 1 else 0.0
        dev_best = statistics.mean(float(r["dev_best"]) for r in mine)
        print(
            f"| {name} | {'yes' if args.calibrate else 'no'} | {mine[0]['majority']:.3f} | {mine[0]['dev_before']:.3f} | "
            f"{dev_best:.3f} | {mine[0]['before']:.3f} | {statistics.mean(after):.3f} ± {spread:.3f} |"
        )


if __name__ == "__main__":
    anyio.run(main)
