"""DLN-2 on generated navigation: a reasoning node feeds a yes/no node that also sees the input.

    python examples/dln2_navigation.py --train 60 --dev 30 --steps 2

Both prompts are learnt jointly; the reasoning node's targets come from posterior inference.
"""

from __future__ import annotations

import argparse

import anyio

import dlgraph as dg
from dlgraph.data import generated_task


def network() -> dg.Network:
    net = dg.Network()
    net.add_node(
        "reason", prompt="Add up the steps in each direction.", max_tokens=40, stop=["\n\n"]
    )
    net.add_node(
        "answer",
        prompt="Are you back at the start? Answer yes or no.",
        classes=["yes|Yes", "no|No"],
    )
    net.add_edge(dg.INPUT, "reason")
    net.add_edge("reason", "answer")
    net.add_edge(dg.INPUT, "answer")  # residual: the answer sees the question and the reasoning
    return net


async def main(args: argparse.Namespace) -> None:
    task = generated_task(
        "navigation", train=args.train, dev=args.dev, test=args.test, seed=args.seed
    )
    net = network()
    async with dg.Engine(dg.connect(args.backend)) as engine:
        trainer = dg.VariationalTrainer(
            net,
            engine,
            num_prompt_samples=args.prompts,
            num_hidden_samples=args.hidden,
            proposal_max_tokens=60,
            seed=args.seed,
        )
        print(f"estimate: {trainer.estimate(args.steps, args.batch, task.train, len(task.dev))}")
        before = await dg.evaluate(net, engine, task.test)
        result = await trainer.fit(task.train, task.dev, steps=args.steps, batch_size=args.batch)
        after = await dg.evaluate(net, engine, task.test)
    print(
        f"navigation (DLN-2): test accuracy {before:.3f} -> {after:.3f}; stopped: {result.stopped}"
    )
    for name, prompt in net.prompts().items():
        print(f"{name}: {prompt}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="llamacpp")
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--dev", type=int, default=30)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse())
