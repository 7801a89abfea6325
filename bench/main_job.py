"""The main job (examples/tweets.toml) over several seeds: test accuracy before and after.

    python bench/main_job.py [--seeds 0 1 2] [--config examples/tweets.toml]

Each seed trains from the same initial instruction with its own random batches, proposal
samples and demonstration draws, selects on dev, and is scored on the held-out test split.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
import attrs

import dlgraph as dg
from dlgraph.config import RunConfig


async def run(config: RunConfig, seed: int) -> dict[str, float]:
    task = config.task()
    net = config.build_network(task)
    started = time.monotonic()
    async with config.engine() as engine:
        before = await dg.evaluate(net, engine, task.test)
        options = attrs.evolve(config.options, seed=seed)
        trainer = dg.VariationalTrainer(net, engine, options)
        result = await trainer.fit(
            task.train, task.dev, config.schedule.steps, config.schedule.batch_size
        )
        after = await dg.evaluate(net, engine, task.test)
        calls = engine.statistics().total.calls
    return {
        "seed": seed,
        "test_before": float(before),
        "test_after": float(after),
        "dev_before": float(result.initial_dev_score or 0),
        "dev_best": float(result.best_dev_score or 0),
        "calls": calls,
        "seconds": time.monotonic() - started,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="examples/tweets.toml")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    config = RunConfig.read(args.config)
    rows = []
    print("| seed | test before | test after | dev before | dev best | calls | seconds |")
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        row = await run(config, seed)
        rows.append(row)
        print(
            f"| {seed} | {row['test_before']:.3f} | {row['test_after']:.3f} | {row['dev_before']:.3f} | "
            f"{row['dev_best']:.3f} | {row['calls']:,} | {row['seconds']:.0f} |",
            flush=True,
        )
    gains = [r["test_after"] - r["test_before"] for r in rows]
    print(
        f"\nmean test accuracy {statistics.mean(r['test_before'] for r in rows):.3f} -> "
        f"{statistics.mean(r['test_after'] for r in rows):.3f} "
        f"(gain {statistics.mean(gains):+.3f}, min {min(gains):+.3f}, over {len(rows)} seeds)"
    )


if __name__ == "__main__":
    anyio.run(main)
