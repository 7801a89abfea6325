"""llama.cpp's own server (llama-server) through the `llamacpp` profile, beside the embedded
model, in one run.

    python bench/llama_server.py [--binary PATH] [--threads N] [--examples 100] [--no-repack]

The binary is --binary, else $DLGRAPH_LLAMA_SERVER (``scripts/build-llama-server`` prints its
path). The server runs on a free port of 127.0.0.1 with the Gemma 3 270M file, 4 slots and
flash attention off, as the tests start it (--no-repack on an Intel CPU with AMX, where
llama-server dies at its first decode with repacked weights).

1. Generated tokens/s at 1 and 4 concurrent calls (32 tokens each), server and embedded.
2. DLN-1 zero-shot on the generated tweets task's test examples: the evaluation's wall time and
   accuracy on each path, and how many predictions the server's first-token path shares with
   the embedded model's exact one.
3. Per class, the largest and mean |p(first-token path) - p(exact)| over the same contexts,
   with the profile's 100 first-token alternatives and with 10 (its number before issue 22).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import attrs
from dlgraph_llamacpp import default_model_path
from dlgraph_openai import PROFILES, OpenAIBackend

import dlgraph as dg
from dlgraph._tasks import map_concurrently
from dlgraph.data import generated_task

SLOTS = 4
TOKENS = 32
TOPICS = ["apples", "rivers", "stones", "clouds", "gardens", "tables", "music", "tigers"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def llama_server(binary: str, threads: int, repack: bool) -> Iterator[str]:
    """The server on a free port until the block ends; its address."""
    port = free_port()
    command = [
        binary,
        "--model", str(default_model_path()),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--parallel", str(SLOTS),
        "--ctx-size", str(SLOTS * 512),
        "--flash-attn", "off",
        "--threads", str(threads),
        *([] if repack else ["--no-repack"]),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"llama-server did not start: {' '.join(command)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait()


def served(url: str, alternatives: int = 100) -> dg.Backend:
    profile = attrs.evolve(PROFILES["llamacpp"], top_logprobs=alternatives)
    return OpenAIBackend(model="gemma", base_url=url, profile=profile)


async def tokens_per_s(backend: dg.Backend, count: int, count_tokens: dg.Backend) -> float:
    prompts = [
        f"Write a short note about {TOPICS[i % len(TOPICS)]} number {i}. Note {i}:"
        for i in range(count)
    ]
    async with dg.Engine(backend, cache=False) as engine:
        await engine.generate("Warm up:", max_tokens=2)
        started = time.perf_counter()
        texts = await map_concurrently(lambda p: engine.generate(p, max_tokens=TOKENS), prompts)
        elapsed = time.perf_counter() - started
    return sum(count_tokens.count_tokens(text) for text in texts) / elapsed


def dln1(task: dg.data.Task) -> dg.Network:
    net = dg.Network()
    net.add_node("answer", prompt=task.instruction, classes=task.classes)
    net.add_edge(dg.INPUT, "answer")
    return net


async def evaluation(
    backend: dg.Backend, task: dg.data.Task
) -> tuple[float, float, tuple[str, ...], tuple[str, ...]]:
    """Seconds, accuracy, predictions and the contexts the class node was given."""
    xs = [example.input for example in task.test]
    async with dg.Engine(backend) as engine:
        started = time.perf_counter()
        trace = await dln1(task).forward(engine, xs)
        elapsed = time.perf_counter() - started
        accuracy = await dg.evaluate(dln1(task), engine, task.test)  # answers from the cache
    return elapsed, float(accuracy), trace.outputs["answer"], trace.rendered["answer"]


async def class_errors(
    backend: dg.Backend, exact: list[list[float]], contexts: tuple[str, ...], classes: list[str]
) -> dict[str, list[float]]:
    errors: dict[str, list[float]] = {spec.split("|")[0]: [] for spec in classes}
    async with dg.Engine(backend) as engine:
        for context, reference in zip(contexts, exact, strict=True):
            distribution = await engine.classify(context, classes)
            for spec, ours, theirs in zip(classes, distribution, reference, strict=True):
                errors[spec.split("|")[0]].append(abs(ours - theirs))
    return errors


async def main(binary: str, threads: int, examples: int, repack: bool) -> None:
    task = generated_task("tweets", train=0, dev=0, test=examples)
    embedded = dg.connect("llamacpp")
    with llama_server(binary, threads, repack) as url:
        print(f"llama-server: {SLOTS} slots, {threads} threads, flash attention off\n")
        print("| concurrent generations (32 tokens) | llama-server tok/s | embedded tok/s |")
        print("|---|---|---|")
        async with dg.connect("llamacpp", parallel=SLOTS) as counter:
            for count in (1, SLOTS):
                remote = await tokens_per_s(served(url), count, counter)
                local = await tokens_per_s(embedded, count, counter)
                print(f"| {count} | {remote:.1f} | {local:.1f} |")
        remote_s, remote_accuracy, remote_out, _ = await evaluation(served(url), task)
        local_s, local_accuracy, local_out, contexts = await evaluation(embedded, task)
        agree = sum(a == b for a, b in zip(remote_out, local_out, strict=True))
        print(f"\nDLN-1 zero-shot on {examples} tweets (one class call each):")
        print(f"* llama-server, first-token path: {remote_s:.1f} s, accuracy {remote_accuracy:.2f}")
        print(f"* embedded, exact path: {local_s:.1f} s, accuracy {local_accuracy:.2f}")
        print(f"* same prediction on {agree} of {examples}")
        async with dg.Engine(dg.connect("llamacpp", deterministic=True)) as reference:
            exact = [await reference.classify(c, task.classes) for c in contexts]
        print("\n| alternatives | " + " | ".join(s.split("|")[0] for s in task.classes) + " |")
        print("|---|" + "---|" * len(task.classes))
        for alternatives in (100, 10):
            errors = await class_errors(served(url, alternatives), exact, contexts, task.classes)
            cells = [f"{max(e):.3f} (mean {sum(e) / len(e):.3f})" for e in errors.values()]
            print(f"| {alternatives} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=os.environ.get("DLGRAPH_LLAMA_SERVER"))
    parser.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0)) - 1))
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--no-repack", dest="repack", action="store_false")
    options = parser.parse_args()
    if not options.binary:
        parser.error(
            'no binary: pass --binary or export DLGRAPH_LLAMA_SERVER="$(scripts/build-llama-server)"'
        )
    anyio.run(main, options.binary, options.threads, options.examples, options.repack)
