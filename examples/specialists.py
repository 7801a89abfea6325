"""A non-linear graph: two specialists work in parallel and an aggregator reads both.

    INPUT ─► sideways ─┐
    INPUT ─► ahead ────┼─► answer ◄─ INPUT
    python examples/specialists.py --train 40 --dev 20 --steps 1

Every prompt is trained; nothing in the trainer knows this shape.
"""

from __future__ import annotations

import argparse

import anyio

import dlgraph as dg
from dlgraph.data import generated_task


def network() -> dg.Network:
    net = dg.Network()
    net.add_node("sideways", prompt="Total the steps left and right.", max_tokens=24, stop=["\n"])
    net.add_node(
        "ahead", prompt="Total the steps forward and backward.", max_tokens=24, stop=["\n"]
    )
    net.add_node("answer", prompt="Are you back at the start?", classes=["yes|Yes", "no|No"])
    for source, target in [
        (dg.INPUT, "sideways"),
        (dg.INPUT, "ahead"),
        ("sideways", "answer"),
        ("ahead", "answer"),
        (dg.INPUT, "answer"),
    ]:
        net.add_edge(source, target)
    return net


async def main(args: argparse.Namespace) -> None:
    task = generated_task("navigation", train=args.train, dev=args.dev, test=args.test, seed=1)
    net = network()
    print(net.to_mermaid())
    async with dg.Engine(dg.connect(args.backend)) as engine:
        trainer = dg.VariationalTrainer(
            net,
            engine,
            num_prompt_samples=args.prompts,
            num_hidden_samples=1,
            proposal_max_tokens=40,
        )
        result = await trainer.fit(task.train, task.dev, steps=args.steps, batch_size=args.batch)
        after = await dg.evaluate(net, engine, task.test)
    print(
        f"specialists: dev {result.initial_dev_score:.3f} -> {result.best_dev_score:.3f}, test {after:.3f}"
    )
    for name, prompt in net.prompts().items():
        print(f"{name}: {prompt}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="llamacpp")
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--dev", type=int, default=20)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=2)
    return parser.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse())
