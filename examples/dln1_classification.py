"""DLN-1: learn the prompt of one classification node (the paper's `subj` task by default).

    python examples/dln1_classification.py --task subj --train 200 --dev 40 --steps 3

Needs the DLN data (../shared/data or $DLGRAPH_DATA) and the embedded model (dlgraph-llamacpp),
or any backend given with --backend.
"""

from __future__ import annotations

import argparse

import anyio

import dlgraph as dg
from dlgraph.data import load_task


async def main(args: argparse.Namespace) -> None:
    task = load_task(args.task)
    net = dg.Network()
    net.add_node("answer", prompt=task.instruction, classes=task.classes)
    net.add_edge(dg.INPUT, "answer")
    dev, test = task.dev[: args.dev], task.test[: args.test]
    async with dg.Engine(dg.connect(args.backend)) as engine:
        before = await dg.evaluate(net, engine, test)
        trainer = dg.VariationalTrainer(
            net, engine, num_prompt_samples=args.prompts, proposal_max_tokens=60
        )
        result = await trainer.fit(
            task.train[: args.train], dev, steps=args.steps, batch_size=args.batch
        )
        after = await dg.evaluate(net, engine, test)
    print(
        f"{args.task}: test accuracy {before:.3f} -> {after:.3f} (dev {result.initial_dev_score:.3f} -> {result.best_dev_score:.3f})"
    )
    print(f"learnt prompt: {net.prompts()['answer']}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="subj")
    parser.add_argument("--backend", default="llamacpp")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--dev", type=int, default=40)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=4)
    return parser.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse())
