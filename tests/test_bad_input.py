"""The bad-input corpus: every input a new user (or a hostile file) might give, each refused
with the right error class and a message naming what is wrong and where, before any model
call when it can be known before one. Grow it with every feature.

Every case runs in a child process under a memory limit and a time limit (`limited.py`):
work is bounded per input (DESIGN.md, "Bad input"), so no case may need more than
`MEMORY_LIMIT_BYTES` of address space or `CASE_TIME_LIMIT_S` seconds, and one that does fails
alone instead of taking the machine with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from dlgraph_sim import ScriptedModel
from limited import LimitedRunner

import dlgraph as dg
from dlgraph.cli import main
from dlgraph.data import generated_task, read_jsonl
from dlgraph.engine.usage import COUNTERS

YES_NO = ["yes|Yes", "no|No"]


def one_node(**options: object) -> dg.Network:
    net = dg.Network()
    net.add_node("answer", prompt="Answer.", **({"classes": YES_NO} | options))  # type: ignore[arg-type]
    net.add_edge(dg.INPUT, "answer")
    return net


def data(*pairs: tuple[str, str]) -> list[dg.Example]:
    return [dg.Example(x, y) for x, y in pairs]


GOOD = data(("a", "yes"), ("b", "no"))


def trainer(**arguments: object) -> dg.VariationalTrainer:
    settings = {"net": one_node(), "engine": dg.Engine(MODEL.current)} | arguments
    return dg.VariationalTrainer(**settings)  # type: ignore[arg-type]


async def fit(**overrides: object) -> None:
    settings = {"train": GOOD, "dev": GOOD, "steps": 1, "batch_size": 2} | overrides
    async with dg.Engine(MODEL.current) as engine:
        trainer = dg.VariationalTrainer(one_node(), engine, num_prompt_samples=1)
        await trainer.fit(**settings)  # type: ignore[arg-type]


async def classify(classes: object) -> None:
    async with dg.Engine(MODEL.current) as engine:
        await engine.classify("Is it?", classes)  # type: ignore[arg-type]


async def forward(net: dg.Network, xs: object, phase: object = "forward") -> None:
    async with dg.Engine(MODEL.current) as engine:
        await net.forward(engine, xs, phase=phase)  # type: ignore[arg-type]


async def _generate(**options: object) -> None:
    async with dg.Engine(MODEL.current) as engine:
        await engine.generate("x", **options)  # type: ignore[arg-type]


async def _samples(count: object) -> None:
    async with dg.Engine(MODEL.current) as engine:
        await engine.samples("x", count)  # type: ignore[arg-type]


async def _logprobs(targets: object) -> None:
    async with dg.Engine(MODEL.current) as engine:
        await engine.logprobs("x", targets)  # type: ignore[arg-type]


async def _classify(classes: object) -> None:
    async with dg.Engine(MODEL.current) as engine:
        await engine.classify("x", classes)  # type: ignore[arg-type]


def _estimate(steps: int) -> None:
    dg.VariationalTrainer(one_node(), dg.Engine(MODEL.current)).estimate(steps, 2, GOOD)


async def pace(examples: list[dg.Example]) -> None:
    async with dg.Engine(MODEL.current) as engine:
        await dg.VariationalTrainer(one_node(), engine).pace(examples)


async def evaluate(examples: list[dg.Example], metric: object = None) -> None:
    async with dg.Engine(MODEL.current) as engine:
        await dg.evaluate(one_node(), engine, examples, metric=metric)  # type: ignore[arg-type]


def network_file(tmp: Path, document: object, raw: bytes | None = None) -> Path:
    path = tmp / "net.json"
    path.write_bytes(raw if raw is not None else json.dumps(document).encode())
    return path


def node_document(**node: object) -> dict[str, object]:
    entry = {"name": "answer", "prompt": "Answer.", "classes": YES_NO} | node
    return {
        "format": "dlgraph.network",
        "version": 2,
        "nodes": [entry],
        "edges": [["INPUT", "answer"]],
    }


class MODEL:
    current = ScriptedModel()


@attrs.frozen
class Case:
    name: str
    act: Callable[[Path], Awaitable[None] | None]
    error: type[Exception]
    message: str
    """A regex the message must match: it names what is wrong and where."""
    after_calls: bool = attrs.field(default=False, kw_only=True)
    """The fault shows only in what the model answered (a metric's verdict on an output), so
    calls come first; every other case is refused before any call."""


def _template(template: str) -> dg.Network:
    net = dg.Network()
    net.add_node("x", prompt="p", template=template)
    net.add_edge(dg.INPUT, "x")
    return net


def _long_prompt(template: str) -> dg.Network:
    """A one-node network whose prompt is 2,000 characters long (a plausible prompt, and
    enough to turn a quadratic template into gigabytes)."""
    net = dg.Network()
    net.add_node("x", prompt="p" * 2000, template=template)
    net.add_edge(dg.INPUT, "x")
    return net


def _checkpoint_file(tmp: Path, raw: bytes) -> Path:
    (tmp / "checkpoint.json").write_bytes(raw)
    return tmp


def _checkpoint_folder(tmp: Path) -> Path:
    (tmp / "checkpoint.json").mkdir()
    return tmp


def _file(tmp: Path, name: str, content: bytes = b"not a folder") -> Path:
    path = tmp / name
    path.write_bytes(content)
    return path


JOURNAL_HEADER = (
    json.dumps({"format": "dlgraph.ledger", "version": 1, "counters": list(COUNTERS)}) + "\n"
).encode()


async def _with_journal(tmp: Path, content: bytes | None) -> None:
    path = tmp / "ledger.jsonl"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    async with dg.Engine(MODEL.current, journal=path) as engine:
        await engine.generate("x")


def _hostile_cache(tmp: Path) -> Path:
    path = tmp / "cache.sqlite"
    connection = sqlite3.connect(path, isolation_level=None)
    for statement in (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta VALUES ('format', 'dlgraph.cache'), ('version', '1')",
        "CREATE VIEW forever AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)"
        " SELECT count(*) FROM n",
        "CREATE TRIGGER slow AFTER INSERT ON answers BEGIN SELECT * FROM forever; END",
    ):
        connection.execute(statement)
    connection.close()
    return path


async def _with_cache(tmp: Path, path: Path) -> None:
    async with dg.Engine(MODEL.current, cache=path):
        pass  # today's code hung at the first answer stored, beyond any cancellation


def _read_result(tmp: Path, extra: dict[str, object]) -> None:
    from dlgraph_ray.sweep import read_result

    result = {"after": {"dev": 0.5}, "calls": 1, "tokens": 1, "cost": 0.0, "steps": 1} | extra
    read_result(_file(tmp, "result.json", json.dumps(result).encode()))


def _sweep_into(tmp: Path, existing: str) -> None:
    from dlgraph_ray.sweep import sweep

    (tmp / "project").mkdir()
    _file(tmp / "project", existing, b"the user's")
    try:
        sweep(_file(tmp, "run.toml", CONFIG.encode()), out=tmp / "project", echo=lambda line: None)
    finally:
        assert (tmp / "project" / existing).read_bytes() == b"the user's"


def _jsonl(tmp: Path, raw: bytes) -> Path:
    path = tmp / "train.jsonl"
    path.write_bytes(raw)
    return path


CASES = [
    # -- networks built in code ---------------------------------------------------------------
    Case(
        "max_tokens 0",
        lambda t: dg.Network().add_node("g", "x", max_tokens=0),
        dg.GraphError,
        r"node 'g': max_tokens must be > 0",
    ),
    Case(
        "max_tokens negative",
        lambda t: dg.Network().add_node("g", "x", max_tokens=-3),
        dg.GraphError,
        r"node 'g': max_tokens must be > 0",
    ),
    Case(
        "classes given as one string",
        lambda t: dg.Network().add_node("c", "x", classes="Yes"),
        dg.GraphError,
        r"node 'c': classes: expected a list of strings",
    ),
    Case(
        "classes that read alike",
        lambda t: dg.Network().add_node("c", "x", classes=["yes", "Yes"]),
        dg.GraphError,
        r"node 'c': classes 'yes' and 'Yes' cannot be told apart",
    ),
    Case(
        "calibrate on a generation node",
        lambda t: dg.Network().add_node("g", "x", calibrate=True),
        dg.GraphError,
        r"node 'g': calibrate applies to class nodes only",
    ),
    Case(
        "max_tokens on a class node",
        lambda t: one_node(max_tokens=3),
        dg.GraphError,
        r"node 'answer': max_tokens applies to generation nodes only",
    ),
    Case(
        "trainable as text",
        lambda t: dg.Network().add_node("g", "x", trainable="false"),
        dg.GraphError,
        r"node 'g': trainable: expected bool",
    ),
    Case(
        "stop as one string",
        lambda t: dg.Network().add_node("g", "x", stop="\n"),
        dg.GraphError,
        r"node 'g': stop: expected a list of strings",
    ),
    Case(
        "a reserved node name",
        lambda t: dg.Network().add_node("prompt", "x"),
        dg.GraphError,
        r"node 'prompt': node name 'prompt' is reserved",
    ),
    Case(
        "a misspelt template name",
        lambda t: dg.Network().add_node("g", "x", template="clasify"),
        dg.GraphError,
        r"node 'g': unknown template 'clasify' \(built-in: reason, classify",
    ),
    Case(
        "a template that does not parse",
        lambda t: dg.Network().add_node("g", "x", template="{{ x"),
        dg.GraphError,
        r"node 'g': template does not parse",
    ),
    Case(
        "an edge to an unknown node",
        lambda t: one_node().add_edge("answer", "anser"),
        dg.GraphError,
        r"edge 'answer' -> 'anser': unknown node 'anser' \(known: answer\)",
    ),
    Case(
        "an edge from an unknown node",
        lambda t: one_node().add_edge("ghost", "answer"),
        dg.GraphError,
        r"edge 'ghost' -> 'answer': unknown node 'ghost' \(known: answer\)",
    ),
    Case(
        "an edge into INPUT",
        lambda t: one_node().add_edge("answer", dg.INPUT),
        dg.GraphError,
        r"edge 'answer' -> 'INPUT': nothing may feed INPUT",
    ),
    Case(
        "an edge given twice",
        lambda t: one_node().add_edge(dg.INPUT, "answer"),
        dg.GraphError,
        r"edge 'INPUT' -> 'answer': duplicate edge",
    ),
    Case(
        "a network without nodes",
        lambda t: dg.Network().validate(),
        dg.GraphError,
        r"the network has no nodes",
    ),
    Case(
        "an empty node name",
        lambda t: dg.Network().add_node(" ", "x"),
        dg.GraphError,
        r"node name must be a non-empty string, got ' '",
    ),
    Case(
        "an empty class",
        lambda t: dg.Network().add_node("c", "x", classes=["yes", "|"]),
        dg.GraphError,
        r"node 'c': empty class in \['yes', '\|'\]",
    ),
    Case(
        "a self edge",
        lambda t: (lambda n: (n.add_edge("answer", "answer"), n.validate()))(one_node()),
        dg.GraphError,
        r"cycle: answer -> answer",
    ),
    Case(
        "a template variable no parent supplies",
        lambda t: _template("{{ prompt }} {{ notes }}").validate(),
        dg.GraphError,
        r"node 'x': template variable 'notes' is supplied by no parent",
    ),
    Case(
        "a template reaching for a global",
        lambda t: _template("{{ cycler.__init__.__globals__ }}").validate(),
        dg.GraphError,
        r"node 'x': template refused: access to attribute '__init__' is not allowed \(line 1\)",
    ),
    Case(
        "a template walking __class__ / __mro__",
        lambda t: _template("{{ prompt.__class__.__mro__ }}").validate(),
        dg.GraphError,
        r"node 'x': template refused: access to attribute '__class__'",
    ),
    Case(
        "a template walking __subclasses__",
        lambda t: forward(_template("{{ ''.__class__.__mro__[1].__subclasses__() }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused",
    ),
    Case(
        "a template reaching a parent's __init__",
        lambda t: forward(_template("{{ parents[0].__init__.__globals__ }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: access to attribute '__init__'",
    ),
    Case(
        "a template reaching the context's globals",
        lambda t: _template("{{ self.__init__.__globals__ }}").validate(),
        dg.GraphError,
        r"node 'x': template refused: the variable 'self' is not allowed",
    ),
    Case(
        "a format-string escape",
        lambda t: forward(_template('{{ "{0.__class__}".format(prompt) }}'), ["x"]),
        dg.GraphError,
        r"node 'x': template refused",
    ),
    Case(
        "a template mutating its input",
        lambda t: forward(_template("{{ parents.append(1) }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: access to attribute 'append'",
    ),
    Case(
        "a template building a huge string",
        lambda t: forward(_template('{{ "a" * 100000000 }}'), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: the operator '\*' is not allowed",
    ),
    Case(
        "a template building a huge string, the count first, and printing its length",
        lambda t: forward(_template('{{ (100000000 * "a") | length }}'), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: the operator '\*' is not allowed in a prompt template",
    ),
    Case(
        "a template building a huge number",
        lambda t: forward(_template("{{ (10 ** 100000) | string | length }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: the operator '\*\*' is not allowed in a prompt template",
    ),
    Case(
        "a retry deadline of zero",
        lambda t: dg.RetryPolicy(deadline_s=0),
        ValueError,
        r"deadline_s must be > 0, got 0",
    ),
    Case(
        "forward on one string",
        lambda t: forward(one_node(), "hello"),
        dg.DataError,
        r"inputs: expected a list of input texts, got one string",
    ),
    Case(
        "forward on numbers",
        lambda t: forward(one_node(), [1, 2]),
        dg.DataError,
        r"inputs\[0\]: expected text, got 1",
    ),
    # -- training and evaluation ---------------------------------------------------------------
    Case(
        "a forward pass of an unknown phase (was an exception group from its tasks)",
        lambda t: forward(one_node(), ["x"], phase="bogus"),
        ValueError,
        r"phase='bogus': expected one of forward, posterior",
    ),
    Case(
        "a metric without a name",
        lambda t: dg.Metric("", lambda outputs, example: 1.0),
        ValueError,
        r"name: a metric needs a name",
    ),
    Case(
        "a metric whose function is a string",
        lambda t: dg.Metric("mine", "exact"),  # type: ignore[arg-type]
        TypeError,
        r"function: expected a function, got 'exact'",
    ),
    Case(
        "an example whose source is a line number",
        lambda t: dg.Example("x", "yes", source=17),  # type: ignore[arg-type]
        TypeError,
        r"source: expected str, got 17",
    ),
    Case(
        "an example with a target for an output of no name",
        lambda t: dg.Example("x", {"": "yes"}),
        ValueError,
        r"target: an output's name is empty",
    ),
    Case(
        "an engine given no backend",
        lambda t: dg.Engine(5),  # type: ignore[arg-type]
        TypeError,
        r"backend: expected a dg.Backend \(such as dg.connect returns\), got 5",
    ),
    Case(
        "a journal path holding a NUL byte",
        lambda t: dg.Engine(MODEL.current, journal="calls\0.jsonl"),
        ValueError,
        r"journal: a path may not hold a NUL byte",
    ),
    Case(
        "a coalescing window of days",
        lambda t: dg.Engine(MODEL.current, coalesce_ms=1e9),
        ValueError,
        r"coalesce_ms must be at most 60,000 \(a minute\), got 1e\+09",
    ),
    Case(
        "a step callback that cannot be called (found only after the first paid step)",
        lambda t: fit(on_step=5),
        TypeError,
        r"on_step: expected a function, got 5",
    ),
    Case(
        "a step log path holding a NUL byte",
        lambda t: fit(log_path="steps\0.jsonl"),
        ValueError,
        r"log_path: a path may not hold a NUL byte",
    ),
    Case(
        "a checkpoint folder that is a number",
        lambda t: fit(checkpoint_dir=5),
        TypeError,
        r"checkpoint_dir: expected a path, got 5",
    ),
    Case(
        "a trainer given no engine",
        lambda t: trainer(engine=5),
        TypeError,
        r"engine: expected a dg.Engine, got 5",
    ),
    Case(
        "a trainer given a backward engine that is none",
        lambda t: trainer(backward="gpt-4"),
        TypeError,
        r"backward: expected a dg.Engine, got 'gpt-4'",
    ),
    Case(
        "a trainer given options that are no TrainerOptions",
        lambda t: trainer(options={"seed": 1}),
        TypeError,
        r"options: expected a dg.TrainerOptions",
    ),
    Case(
        "a trainer given no network",
        lambda t: trainer(net="net.json"),
        TypeError,
        r"net: expected a dg.Network, got 'net.json'",
    ),
    Case(
        "an estimate for a negative dev set",
        lambda t: trainer().estimate(1, 2, dev_size=-1),
        ValueError,
        r"dev_size must be >= 0, got -1",
    ),
    Case(
        "an estimate on training examples that are pairs, not examples",
        lambda t: trainer().estimate(1, 2, [("x", "yes")]),  # type: ignore[list-item]
        dg.DataError,
        r"train\[0\]",
    ),
    Case("an empty dev set", lambda t: fit(dev=[]), dg.DataError, r"dev: empty dataset"),
    Case("an empty train set", lambda t: fit(train=[]), dg.DataError, r"train: empty dataset"),
    Case(
        "a target outside the classes",
        lambda t: fit(train=data(("a", "yes"), ("b", "maybe"))),
        dg.DataError,
        r"train\[1\]: target 'maybe' is not a class of node 'answer'",
    ),
    Case(
        "a target outside the classes, read from a file",
        lambda t: fit(
            train=read_jsonl(
                _jsonl(t, b'{"input": "a", "target": "yes"}\n{"input": "b", "target": "maybe"}\n')
            )
        ),
        dg.DataError,
        r"train.jsonl:2: target 'maybe' is not a class of node 'answer'",
    ),
    Case(
        "evaluation with a target outside the classes",
        lambda t: evaluate(data(("a", "perhaps"))),
        dg.DataError,
        r"evaluation data\[0\]: target 'perhaps'",
    ),
    Case(
        "evaluation on nothing",
        lambda t: evaluate([]),
        dg.DataError,
        r"evaluation data: empty dataset",
    ),
    Case(
        "evaluation under an unknown metric",
        lambda t: evaluate(GOOD, metric="numbr"),
        dg.MetricError,
        r"^unknown metric 'numbr' \(known: contains, exact, number, token_f1",
    ),
    Case(
        "evaluation under a metric that is no function",
        lambda t: evaluate(GOOD, metric=3),
        dg.MetricError,
        r"^metric: expected a name or a function, got 3$",
    ),
    Case(
        "a metric returning NaN",
        lambda t: evaluate(GOOD, metric=lambda outputs, example: float("nan")),
        dg.MetricError,
        r"^metric '<lambda>' on evaluation data\[0\] \(input 'a'\): returned nan; a metric",
        after_calls=True,
    ),
    Case(
        "a metric returning text",
        lambda t: evaluate(GOOD, metric=lambda outputs, example: "0.5"),
        dg.MetricError,
        r"^metric '<lambda>' on evaluation data\[0\] \(input 'a'\): returned '0.5'",
        after_calls=True,
    ),
    Case(
        "a metric returning a bool",
        lambda t: evaluate(GOOD, metric=lambda outputs, example: outputs == example.target),
        dg.MetricError,
        r"^metric '<lambda>' on evaluation data\[0\] \(input 'a'\): returned (True|False)",
        after_calls=True,
    ),
    Case(
        "the number metric on targets without a number",
        lambda t: evaluate(GOOD, metric="number"),
        dg.MetricError,
        r"^metric 'number' on evaluation data\[0\] \(input 'a'\): raised ValueError: target "
        r"'yes' holds no number$",
        after_calls=True,
    ),
    Case(
        "training under an unknown metric",
        lambda t: fit(metric="f1"),
        dg.MetricError,
        r"^unknown metric 'f1' \(known: contains, exact, number, token_f1",
    ),
    Case("steps below one", lambda t: fit(steps=-2), ValueError, r"steps must be > 0, got -2"),
    Case(
        "a batch of zero", lambda t: fit(batch_size=0), ValueError, r"batch_size must be > 0, got 0"
    ),
    Case(
        "an option of the wrong type",
        lambda t: dg.TrainerOptions(num_prompt_samples="4"),
        TypeError,
        r"num_prompt_samples: expected int, got '4'",
    ),
    Case(
        "an unknown trainable node",
        lambda t: dg.VariationalTrainer(one_node(), dg.Engine(MODEL.current), trainable=["ghost"]),
        dg.GraphError,
        r"unknown node 'ghost' \(known: answer\)",
    ),
    Case(
        "an example that is not text",
        lambda t: dg.Example(5, "yes"),
        TypeError,
        r"input: expected str, got 5",
    ),
    Case(
        "data given as one string",
        lambda t: fit(train="lots"),
        dg.DataError,
        r"train: expected a list of dg.Example",
    ),
    Case(
        "a generated task of -5 examples",
        lambda t: generated_task("navigation", train=-5),
        dg.DataError,
        r"generated task 'navigation': train must be >= 0, got -5",
    ),
    # -- the engine ----------------------------------------------------------------------------
    Case("rpm 0", lambda t: dg.Engine(MODEL.current, rpm=0), ValueError, r"rpm must be > 0, got 0"),
    Case(
        "rpm negative",
        lambda t: dg.Engine(MODEL.current, rpm=-5),
        ValueError,
        r"rpm must be > 0, got -5",
    ),
    Case(
        "rpm as text",
        lambda t: dg.Engine(MODEL.current, rpm="fast"),
        TypeError,
        r"rpm: expected float, got 'fast'",
    ),
    Case(
        "max_concurrency 0",
        lambda t: dg.Engine(MODEL.current, max_concurrency=0),
        ValueError,
        r"max_concurrency must be > 0, got 0",
    ),
    Case(
        "a cache that is a number",
        lambda t: dg.Engine(MODEL.current, cache=5),
        TypeError,
        r"cache: expected true, false or a file path, got 5",
    ),
    Case(
        "a budget of no calls",
        lambda t: dg.Budget(max_calls=0),
        ValueError,
        r"max_calls must be > 0",
    ),
    Case(
        "coalesce_ms negative",
        lambda t: dg.Engine(MODEL.current, coalesce_ms=-1),
        ValueError,
        r"coalesce_ms must be >= 0",
    ),
    Case(
        "limits twice",
        lambda t: dg.Engine(MODEL.current, rpm=5, limits=dg.RateLimits(rpm=6)),
        ValueError,
        r"rpm, tpm and max_concurrency as keywords or in limits, not both",
    ),
    Case(
        "an engine limited to zero requests a minute",
        lambda t: dg.Engine(dg.Backend(), rpm=0),
        ValueError,
        r"rpm must be > 0, got 0",
    ),
    Case(
        "an engine limited to zero tokens a minute",
        lambda t: dg.Engine(dg.Backend(), tpm=0),
        ValueError,
        r"tpm must be > 0, got 0",
    ),
    Case(
        "an engine allowed no call in flight",
        lambda t: dg.Engine(dg.Backend(), max_concurrency=0),
        ValueError,
        r"max_concurrency must be > 0, got 0",
    ),
    Case(
        "rate limits with a burst of no time",
        lambda t: dg.RateLimits(rpm=60, burst_s=0),
        ValueError,
        r"burst_s must be > 0, got 0",
    ),
    Case(
        "rate limits with a negative pause after a 429",
        lambda t: dg.RateLimits(pause_without_retry_after_s=-1),
        ValueError,
        r"pause_without_retry_after_s must be >= 0, got -1",
    ),
    Case(
        "rate limits with a negative jitter",
        lambda t: dg.RateLimits(pause_jitter=-0.1),
        ValueError,
        r"pause_jitter must be >= 0, got -0.1",
    ),
    Case(
        "rate limits of zero requests a minute",
        lambda t: dg.RateLimits(rpm=0),
        ValueError,
        r"rpm must be > 0, got 0",
    ),
    Case(
        "a shared limit that is not a grant source",
        lambda t: dg.Engine(dg.Backend(), rpm=60, shared_limit=object()),  # type: ignore[arg-type]
        TypeError,
        r"shared_limit: expected a GrantSource, got <object",
    ),
    Case(
        "classes as one string to classify",
        lambda t: classify("yes|no"),
        TypeError,
        r"expected a list of strings, got the string 'yes\|no'",
    ),
    Case(
        "stop as one string in a request",
        lambda t: dg.GenerateRequest("x", stop="\n"),
        TypeError,
        r"stop: expected a list of strings",
    ),
    Case(
        "an unknown phase",
        lambda t: dg.LogprobRequest("x", "y", phase="training"),
        ValueError,
        r"phase='training': expected one of forward, posterior",
    ),
    Case(
        "continuations as one string",
        lambda t: dg.ContinuationsRequest("x", " yes"),  # type: ignore[arg-type]
        TypeError,
        r"continuations: expected a list of strings, got the string ' yes'",
    ),
    Case(
        "no continuations to score",
        lambda t: dg.ContinuationsRequest("x", []),
        ValueError,
        r"continuations: expected at least one text to score, got none",
    ),
    Case(
        "an empty continuation",
        lambda t: dg.ContinuationsRequest("x", [" yes", ""]),
        ValueError,
        r"continuations\[1\]: an empty text has nothing to score",
    ),
    Case(
        "a continuation that is not text",
        lambda t: dg.ContinuationsRequest("x", [" yes", 3]),  # type: ignore[list-item]
        TypeError,
        r"continuations: expected a list of strings, got an item 3",
    ),
    Case(
        "more continuations than one request takes",
        lambda t: dg.ContinuationsRequest("x", [" yes"] * 257),
        ValueError,
        r"continuations: at most 256 per request, got 257",
    ),
    Case(
        "continuations after a context that is not text",
        lambda t: dg.ContinuationsRequest(None, [" yes"]),  # type: ignore[arg-type]
        TypeError,
        r"context: expected str, got None",
    ),
    Case(
        "continuations of an unknown phase",
        lambda t: dg.ContinuationsRequest("x", [" yes"], phase="training"),  # type: ignore[arg-type]
        ValueError,
        r"phase='training': expected one of forward, posterior",
    ),
    Case(
        "a backend stating it scores a negative number of continuations",
        lambda t: dg.Capabilities(continuations=-1),
        ValueError,
        r"continuations must be >= 0, got -1",
    ),
    Case(
        "a backend stating whether it repeats a context with a string",
        lambda t: dg.Capabilities(repeats_context="yes"),  # type: ignore[arg-type]
        TypeError,
        r"repeats_context: expected bool \(true or false\), got 'yes'",
    ),
    Case(
        "a backend reporting a negative token count (it would pay a budget back)",
        lambda t: dg.CallUsage(prompt_tokens=-1_000_000),
        ValueError,
        r"prompt_tokens must be >= 0, got -1000000",
    ),
    Case(
        "a backend reporting a token count that is no whole number",
        lambda t: dg.CallUsage(completion_tokens=1.5),  # type: ignore[arg-type]
        TypeError,
        r"completion_tokens: expected int, got 1.5",
    ),
    Case(
        "a backend reporting the server's remaining requests as true",
        lambda t: dg.CallUsage(remaining_requests=True),
        TypeError,
        r"remaining_requests: expected int",
    ),
    Case(
        "a backend stating requests of no prompts",
        lambda t: dg.Capabilities(max_batch=0),
        ValueError,
        r"max_batch must be > 0, got 0",
    ),
    Case(
        "a backend stating its batch size as text",
        lambda t: dg.Capabilities(max_batch="8"),  # type: ignore[arg-type]
        TypeError,
        r"max_batch: expected int, got '8'",
    ),
    Case(
        "a backend stating no calls at all may be in flight",
        lambda t: dg.Capabilities(max_concurrency=0),
        ValueError,
        r"max_concurrency must be > 0, got 0",
    ),
    Case(
        "a backend stating a context window of no tokens",
        lambda t: dg.Capabilities(context_window=0),
        ValueError,
        r"context_window must be > 0, got 0",
    ),
    Case(
        "a backend stating a negative number of first-token alternatives",
        lambda t: dg.Capabilities(top_logprobs=-5),
        ValueError,
        r"top_logprobs must be >= 0, got -5",
    ),
    Case(
        "a backend stating exact log-probabilities with a string",
        lambda t: dg.Capabilities(exact_logprobs="no"),  # type: ignore[arg-type]
        TypeError,
        r"exact_logprobs: expected bool",
    ),
    Case(
        "several targets of one context that are not texts",
        lambda t: dg.ContinuationsRequest("x", [" yes", 3]),  # type: ignore[list-item]
        TypeError,
        r"continuations",
    ),
    Case(
        "several targets of one context given as one string",
        lambda t: _logprobs(" yes"),
        TypeError,
        r"targets: expected a list of strings, got the string ' yes'",
    ),
    Case(
        "a request naming its node with a number",
        lambda t: dg.LogprobRequest("x", "y", node=3),  # type: ignore[arg-type]
        TypeError,
        r"node: expected str, got 3",
    ),
    Case(
        "a request naming its node with an empty name",
        lambda t: dg.SamplesRequest("x", count=2, node=""),
        ValueError,
        r"node: expected a node's name or None, got ''",
    ),
    Case(
        "a generation naming its node with a list",
        lambda t: _generate(node=["reason"]),
        TypeError,
        r"node: expected str, got \['reason'\]",
    ),
    Case(
        "samples of a negative seed",
        lambda t: dg.SamplesRequest("x", count=2, seed=-1),
        ValueError,
        r"seed must be >= 0, got -1",
    ),
    Case(
        "samples whose seeds go past the largest",
        lambda t: dg.SamplesRequest("x", count=3, seed=2**32 - 2),
        ValueError,
        r"seed: samples of seeds 4,294,967,294 to 4,294,967,296 go past the largest seed",
    ),
    Case(
        "a generation of no seed",
        lambda t: dg.GenerateRequest("x", seed=None),  # type: ignore[arg-type]
        TypeError,
        r"seed: expected int, got None",
    ),
    Case(
        "samples counted as nothing",
        lambda t: dg.SamplesRequest("x", count=None),  # type: ignore[arg-type]
        TypeError,
        r"count: expected int, got None",
    ),
    Case(
        "a generation at no temperature",
        lambda t: _generate(temperature=None),
        TypeError,
        r"temperature: expected float, got None",
    ),
    Case(
        "samples of one prompt counted with a bool",
        lambda t: dg.SamplesRequest("x", count=True),  # type: ignore[arg-type]
        TypeError,
        r"count: expected int, got True",
    ),
    Case(
        "no samples in a samples request",
        lambda t: dg.SamplesRequest("x", count=0),
        ValueError,
        r"count must be > 0, got 0",
    ),
    Case(
        "more samples than one request draws",
        lambda t: dg.SamplesRequest("x", count=129),
        ValueError,
        r"count must be <= 128, got 129",
    ),
    Case(
        "samples of a prompt that is not text",
        lambda t: dg.SamplesRequest(b"x", count=2),  # type: ignore[arg-type]
        TypeError,
        r"prompt: expected str, got b'x'",
    ),
    Case(
        "samples at a negative temperature",
        lambda t: dg.SamplesRequest("x", count=2, temperature=-1.0),
        ValueError,
        r"temperature must be >= 0",
    ),
    Case(
        "a backend stating it draws a negative number of samples",
        lambda t: dg.Capabilities(samples=-1),
        ValueError,
        r"samples must be >= 0, got -1",
    ),
    Case(
        "a backend stating it draws samples as text",
        lambda t: dg.Capabilities(samples="8"),  # type: ignore[arg-type]
        TypeError,
        r"samples: expected int, got '8'",
    ),
    Case(
        "an engine asked for a negative number of samples",
        lambda t: _samples(-1),
        ValueError,
        r"count must be >= 0, got -1",
    ),
    Case(
        "an engine asked for samples counted as text",
        lambda t: _samples("5"),
        TypeError,
        r"count: expected int, got '5'",
    ),
    Case(
        "an engine asked for more samples than it draws in one go",
        lambda t: _samples(10_001),
        ValueError,
        r"count must be <= 10,000, got 10001",
    ),
    Case(
        "an unknown backend",
        lambda t: dg.connect("gpt9"),
        dg.UnknownBackend,
        r"unknown backend 'gpt9' \(known: .*sim",
    ),
    # -- files users load ----------------------------------------------------------------------
    Case(
        "a missing network file",
        lambda t: dg.Network.load(t / "missing.json"),
        dg.GraphError,
        r"missing.json: no such file",
    ),
    Case(
        "a network file holding a list",
        lambda t: dg.Network.load(network_file(t, [1, 2])),
        dg.GraphError,
        r"net.json: not a dlgraph network \(expected a JSON object, got list\)",
    ),
    Case(
        "a network file that is not UTF-8",
        lambda t: dg.Network.load(network_file(t, None, b"\xff\xfe{}")),
        dg.GraphError,
        r"net.json: not UTF-8 text",
    ),
    Case(
        "a truncated network file",
        lambda t: dg.Network.load(network_file(t, None, b'{"format": "dlg')),
        dg.GraphError,
        r"net.json: not valid JSON",
    ),
    Case(
        "a network file whose version is true",
        lambda t: dg.Network.load(network_file(t, node_document() | {"version": True})),
        dg.GraphError,
        r"net.json: not a dlgraph network \(format 'dlgraph.network', version True",
    ),
    Case(
        "a network file whose version is a fraction",
        lambda t: dg.Network.load(network_file(t, node_document() | {"version": 2.0})),
        dg.GraphError,
        r"net.json: not a dlgraph network \(format 'dlgraph.network', version 2.0",
    ),
    Case(
        "a network file with an unknown top-level key",
        lambda t: dg.Network.load(network_file(t, node_document() | {"edge": []})),
        dg.GraphError,
        r"net.json: unknown key 'edge' \(a network holds format, version, nodes, edges\)",
    ),
    Case(
        "a network file with an empty template",
        lambda t: dg.Network.load(network_file(t, node_document(template=""))),
        dg.GraphError,
        r"net.json: node 'answer': template is empty",
    ),
    Case(
        "a network file with a class of an empty spelling",
        lambda t: dg.Network.load(network_file(t, node_document(classes=["yes|", "no"]))),
        dg.GraphError,
        r"net.json: node 'answer': class 'yes\|': an empty verbalizer",
    ),
    Case(
        "a misspelt node setting in code",
        lambda t: dg.Network().add_node("answer", "Answer.", clases=["yes", "no"]),  # type: ignore[call-arg]
        dg.GraphError,
        r"node 'answer': unknown setting 'clases' \(known: demonstrations, template, classes",
    ),
    Case(
        "a network file with an unknown node key",
        lambda t: dg.Network.load(network_file(t, node_document(colour="red"))),
        dg.GraphError,
        r"net.json: node 'answer': unknown key 'colour'",
    ),
    Case(
        "a network file with is_trainable as text",
        lambda t: dg.Network.load(network_file(t, node_document(trainable="false"))),
        dg.GraphError,
        r"net.json: node 'answer': trainable: expected bool",
    ),
    Case(
        "a network file with calibrate on a generation node",
        lambda t: dg.Network.load(network_file(t, node_document(classes=None, calibrate=True))),
        dg.GraphError,
        r"net.json: node 'answer': calibrate applies to class nodes only",
    ),
    Case(
        "a network file with a bad edge",
        lambda t: dg.Network.load(network_file(t, node_document() | {"edges": [["INPUT"]]})),
        dg.GraphError,
        r"net.json: edges\[0\]: expected \[source, target\]",
    ),
    Case(
        "demonstrations given as one string",
        lambda t: dg.Network().add_node("g", "x", demonstrations="Yes"),
        dg.GraphError,
        r"node 'g': demonstrations: expected a list",
    ),
    Case(
        "a demonstration without an output",
        lambda t: dg.Network().add_node("g", "x", demonstrations=[{"input": "a"}]),
        dg.GraphError,
        r"node 'g': demonstrations\[0\]: expected an object with input and output",
    ),
    Case(
        "a network file with a demonstration that is not text",
        lambda t: dg.Network.load(
            network_file(t, node_document(demonstrations=[{"input": "a", "output": 3}]))
        ),
        dg.GraphError,
        r"net.json: node 'answer': output: expected str, got 3",
    ),
    Case(
        "a target mapping without text",
        lambda t: dg.Example("x", {"answer": 3}),
        TypeError,
        r"target: expected text for each output",
    ),
    Case(
        "a target mapping naming another output",
        lambda t: evaluate(data(("a", "yes")) + [dg.Example("b", {"topic": "no"})]),
        dg.DataError,
        r"evaluation data\[1\]: target names topic; the output nodes are answer",
    ),
    Case(
        "a data line whose target names an output of no name",
        lambda t: read_jsonl(_jsonl(t, b'{"input": "a", "target": {"": "yes"}}\n')),
        dg.DataError,
        r"train.jsonl:1: target: an output's name is empty",
    ),
    Case(
        "a JSONL target that is a list",
        lambda t: read_jsonl(_jsonl(t, b'{"input": "a", "target": ["yes"]}\n')),
        dg.DataError,
        r"train.jsonl:1: field 'target' must be text, or an object of texts",
    ),
    Case(
        "a JSONL line that is not UTF-8",
        lambda t: read_jsonl(_jsonl(t, b'{"input": "a", "target": "b"}\n{"input": "\xff"}\n')),
        dg.DataError,
        r"train.jsonl:2: not UTF-8 text",
    ),
    Case(
        "a JSONL line without a target",
        lambda t: read_jsonl(_jsonl(t, b'{"input": "a"}\n')),
        dg.DataError,
        r"train.jsonl:1: missing field 'target'",
    ),
    Case(
        "a JSONL line holding a list",
        lambda t: read_jsonl(_jsonl(t, b"[1, 2]\n")),
        dg.DataError,
        r"train.jsonl:1: expected a JSON object",
    ),
    Case(
        "measuring the pace with no training examples",
        lambda t: pace([]),
        dg.DataError,
        r"measuring the pace needs at least one training example",
    ),
    Case(
        "a JSONL file that is a folder",
        lambda t: read_jsonl(t),
        dg.DataError,
        r"is a folder, not a data file",
    ),
    # -- bounded work per input: files nested deep, huge numbers, odd paths (issue 21) --------
    Case(
        "a network file nested 100,000 levels deep",
        lambda t: dg.Network.load(network_file(t, None, b"[" * 100_000 + b"]" * 100_000)),
        dg.GraphError,
        r"net.json: not valid JSON: containers nested more than 32 levels deep: line 1 column 33",
    ),
    Case(
        "a network file nested 40 levels deep",
        lambda t: dg.Network.load(network_file(t, node_document(stop=DEEP_LIST))),
        dg.GraphError,
        r"net.json: not valid JSON: containers nested more than 32 levels deep",
    ),
    Case(
        "a network file with a 5,000-digit number",
        lambda t: dg.Network.load(
            network_file(
                t,
                None,
                json.dumps(node_document()).replace("[", "[" + "9" * 5000 + ", ", 1).encode(),
            )
        ),
        dg.GraphError,
        r"net.json: not valid JSON: a number of more than 4,300 digits: line 1 column \d+",
    ),
    Case(
        "a network file with a number beyond the largest float",
        lambda t: dg.Network.load(
            network_file(t, node_document(classes=None, temperature=10**400))
        ),
        dg.GraphError,
        r"net.json: node 'answer': temperature: expected a number, got <an integer of 401 digits> \(too large\)",
    ),
    Case(
        "a network file with an infinite temperature",
        lambda t: dg.Network.load(
            network_file(
                t,
                None,
                json.dumps(node_document(classes=None, temperature=1))
                .replace('"temperature": 1', '"temperature": 1e999')
                .encode(),
            )
        ),
        dg.GraphError,
        r"net.json: node 'answer': temperature: expected a finite number, got inf",
    ),
    Case(
        "a network file with a key given twice",
        lambda t: dg.Network.load(
            network_file(t, None, b'{"format": "dlgraph.network", "format": "x", "version": 2}')
        ),
        dg.GraphError,
        r"net.json: not valid JSON: duplicate key 'format': line 1 column 31",
    ),
    Case(
        "a network path with a NUL byte",
        lambda t: dg.Network.load(f"{t}/net\0.json"),
        dg.GraphError,
        r"net\x00.json: the path holds a NUL byte",
    ),
    Case(
        "a network path that is a folder",
        lambda t: dg.Network.load(t),
        dg.GraphError,
        r"is a folder, not a file",
    ),
    Case(
        "a network path under a file",
        lambda t: dg.Network.load(network_file(t, node_document()) / "net.json"),
        dg.GraphError,
        r"net.json/net.json: no such file \(a folder on its path is a file\)",
    ),
    Case(
        "a JSONL line nested 100,000 levels deep",
        lambda t: read_jsonl(_jsonl(t, b'{"input": "a", "target": ' + b"[" * 100_000 + b"\n")),
        dg.DataError,
        r"train.jsonl:1: not valid JSON: containers nested more than 32 levels deep",
    ),
    Case(
        "a JSONL path with a NUL byte",
        lambda t: read_jsonl(f"{t}/train\0.jsonl"),
        dg.DataError,
        r"train\x00.jsonl: the path holds a NUL byte",
    ),
    Case(
        "a checkpoint nested 100,000 levels deep",
        lambda t: fit(checkpoint_dir=_checkpoint_file(t, b"[" * 100_000 + b"]" * 100_000)),
        dg.CheckpointError,
        r"checkpoint.json: corrupt or truncated checkpoint \(containers nested more than 32",
    ),
    Case(
        "a checkpoint file that is a folder",
        lambda t: fit(checkpoint_dir=_checkpoint_folder(t)),
        dg.CheckpointError,
        r"checkpoint.json: is a folder, not a checkpoint file",
    ),
    Case(
        "a value quoted in an error is a short excerpt of it",
        lambda t: dg.Network().add_node("g", "x", stop="x" * 1_000_000),
        dg.GraphError,
        r"^node 'g': stop: expected a list of strings, got the string 'x{60}\.\.\.'$",
    ),
    # -- bounded work per input: templates say only what prompts need, within a budget -------
    Case(
        "a template centring text in 1.5 billion characters",
        lambda t: forward(_long_prompt("{{ 'x'|center(1500000000) }}{{ input }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: the filter 'center' is not allowed \(allowed: capitalize,",
    ),
    Case(
        "a template formatting a 900-million-digit number",
        lambda t: forward(_long_prompt("{{ '%0900000000d'|format(1) }}{{ input }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: the filter 'format' is not allowed",
    ),
    Case(
        "a template formatting with %",
        lambda t: forward(_long_prompt("{{ '%0900000000d' % 1 }}{{ input }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: the operator '%' is not allowed in a prompt template \(line 1\)",
    ),
    Case(
        "a template indenting by 1.5 billion spaces",
        lambda t: forward(_long_prompt("{{ input|indent(1500000000) }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: it writes more than 1,020,\d{3} characters",
    ),
    Case(
        "a template replacing every gap by the prompt, twice",
        lambda t: forward(
            _long_prompt("{{ prompt|replace('', prompt)|replace('', prompt) }}{{ input }}"), ["x"]
        ),
        dg.GraphError,
        r"node 'x': template refused: it writes more than [\d,]+ characters",
    ),
    Case(
        "a template looping three deep over a 2,000-character prompt",
        lambda t: forward(
            _long_prompt(
                "{% for a in prompt %}{% for b in prompt %}{% for c in prompt %}x"
                "{% endfor %}{% endfor %}{% endfor %}{{ input }}"
            ),
            ["x"],
        ),
        dg.GraphError,
        r"node 'x': template refused: it takes more than 102,\d{3} steps",
    ),
    Case(
        "a template doubling its prompt in a loop",
        lambda t: forward(
            _long_prompt("{% for a in prompt %}{{ prompt ~ prompt }}{% endfor %}{{ input }}"),
            ["x"],
        ),
        dg.GraphError,
        r"node 'x': template refused: it writes more than [\d,]+ characters",
    ),
    Case(
        "a template joining the prompt's pieces with the prompt",
        lambda t: forward(_long_prompt("{{ prompt.split('p')|join(prompt) }}{{ input }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: it writes more than [\d,]+ characters",
    ),
    Case(
        "a template doubling its prompt 32 times in a macro",
        lambda t: forward(
            _long_prompt(
                "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}"
                "{% endmacro %}{{ d(prompt, 32) }}{{ input }}"
            ),
            ["x"],
        ),
        dg.GraphError,
        r"node 'x': template refused: \{% macro %\} is not allowed in a prompt template",
    ),
    Case(
        "a template chaining powers",
        lambda t: forward(_long_prompt("{{ ((9 ** 64) ** 64) ** 64 }}{{ input }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: the operator '\*\*' is not allowed",
    ),
    Case(
        "a template calling a text method that pads",
        lambda t: forward(_long_prompt("{{ prompt.center(1500000000) }}{{ input }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: access to attribute 'center' is not allowed \(line 1\)",
    ),
    Case(
        "a template calling zfill",
        lambda t: forward(_long_prompt("{{ prompt.zfill(1500000000) }}{{ input }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: access to attribute 'zfill' is not allowed",
    ),
    Case(
        "a template that includes another",
        lambda t: forward(_template("{% include 'other' %}{{ input }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: \{% include %\} is not allowed in a prompt template \(line 1\)",
    ),
    Case(
        "a template calling format_map",
        lambda t: forward(_template("{{ '{a}'.format_map({'a': input}) }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: access to attribute 'format_map' is not allowed",
    ),
    Case(
        "a template using tojson",
        lambda t: forward(_template("{{ input|tojson }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: the filter 'tojson' is not allowed",
    ),
    Case(
        "a template with a recursive loop",
        lambda t: forward(
            _template("{% for p in parents recursive %}{{ loop(parents) }}{% endfor %}{{ input }}"),
            ["x"],
        ),
        dg.GraphError,
        r"node 'x': template refused: recursive loops are not allowed \(line 1\)",
    ),
    Case(
        "a template that sets a variable",
        lambda t: forward(_template("{% set x = input ~ input %}{{ x }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: \{% set %\} is not allowed",
    ),
    Case(
        "a template calling a function",
        lambda t: forward(_template("{{ input|first() }}{{ range(10) }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: calls are not allowed, except of capitalize\(\), endswith",
    ),
    Case(
        "a parent named self",
        lambda t: dg.Network().add_node("self", "x"),
        dg.GraphError,
        r"node 'self': node name 'self' is reserved \(templates read it as something else\)",
    ),
    Case(
        "a parent named loop",
        lambda t: dg.Network().add_node("loop", "x"),
        dg.GraphError,
        r"node 'loop': node name 'loop' is reserved",
    ),
    Case(
        "a template of 20,001 characters",
        lambda t: dg.Network().add_node("g", "x", template="{{ input }}" + "x" * 19_990),
        dg.GraphError,
        r"node 'g': template refused: it is 20,001 characters long \(at most 20,000\)",
    ),
    Case(
        "a template nested 500 parentheses deep",
        lambda t: dg.Network().add_node(
            "g", "x", template="{{ " + "(" * 500 + "input" + ")" * 500 + " }}"
        ),
        dg.GraphError,
        r"node 'g': template refused: it nests (too deeply|more than 40 levels deep)",
    ),
    Case(
        "a template nested 41 levels deep",
        lambda t: dg.Network().add_node(
            "g", "x", template="{% if input %}" * 41 + "x" + "{% endif %}" * 41
        ),
        dg.GraphError,
        r"node 'g': template refused: it nests more than 40 levels deep \(line 1\)",
    ),
    Case(
        "a template that fails on real input names the node",
        lambda t: forward(_template("{{ prompt }}{{ input|join(5) }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template failed: ",
    ),
    # -- bounded work per input: API values checked when given, not when used (issue 21) ------
    Case(
        "a budget that is a number",
        lambda t: dg.Engine(MODEL.current, budget=5),
        TypeError,
        r"^budget: expected a dg.Budget, got 5$",
    ),
    Case(
        "a retry policy that is a number",
        lambda t: dg.Engine(MODEL.current, retry=5),
        TypeError,
        r"^retry: expected a dg.RetryPolicy, got 5$",
    ),
    Case(
        "a price that is a number",
        lambda t: dg.Engine(MODEL.current, price=5),
        TypeError,
        r"^price: expected a dg.Price or a table of them by backend identity, got 5$",
    ),
    Case(
        "limits that are a number",
        lambda t: dg.Engine(MODEL.current, limits=5),
        TypeError,
        r"^limits: expected a dg.RateLimits, got 5$",
    ),
    Case(
        "a clock that is a number",
        lambda t: dg.Engine(MODEL.current, clock=5),
        TypeError,
        r"^clock: expected a function, got 5$",
    ),
    Case(
        "a priority given as a word",
        lambda t: _generate(priority="high"),
        TypeError,
        r"^priority: expected int, got 'high'$",
    ),
    Case(
        "classification among no classes",
        lambda t: _classify([]),
        ValueError,
        r"^classes: expected class specs such as 'yes\|Yes', got \[\]$",
    ),
    Case(
        "classification among empty classes",
        lambda t: _classify(["", "|"]),
        ValueError,
        r"classes: expected class specs such as 'yes\|Yes', got \['', '\|'\]",
    ),
    Case(
        "a cache path with a NUL byte",
        lambda t: dg.Engine(MODEL.current, cache="cache\0.sqlite"),
        ValueError,
        r"cache: a path may not hold a NUL byte, got 'cache\\x00.sqlite'",
    ),
    Case(
        "an rpm of one call in 100,000 years",
        lambda t: dg.Engine(MODEL.current, rpm=1e-9),
        ValueError,
        r"rpm must be >= 1 per minute \(a lower limit waits hours between calls\), got 1e-09",
    ),
    Case(
        "a tpm below one token a minute, in RateLimits",
        lambda t: dg.RateLimits(tpm=0.5),
        ValueError,
        r"tpm must be >= 1 per minute",
    ),
    Case(
        "an infinite rpm",
        lambda t: dg.Engine(MODEL.current, rpm=float("inf")),
        ValueError,
        r"^rpm: expected a finite number, got inf$",
    ),
    Case(
        "an infinite temperature",
        lambda t: dg.Network().add_node("g", "x", temperature=float("inf")),
        dg.GraphError,
        r"^node 'g': temperature: expected a finite number, got inf$",
    ),
    Case(
        "an infinite temperature in a request",
        lambda t: dg.GenerateRequest("x", temperature=float("inf")),
        ValueError,
        r"^temperature: expected a finite number, got inf$",
    ),
    Case(
        "an empty stop string",
        lambda t: dg.Network().add_node("g", "x", stop=["\n", ""]),
        dg.GraphError,
        r"^node 'g': stop\[1\]: an empty stop string would end every answer$",
    ),
    Case(
        "classes given as a dict",
        lambda t: dg.Network().add_node("c", "x", classes={"yes": "Yes", "no": "No"}),
        dg.GraphError,
        r"^node 'c': classes: expected a list of strings, got a mapping: \{'yes': 'Yes', 'no': 'No'\}$",
    ),
    Case(
        "classes given as a set",
        lambda t: dg.Network().add_node("c", "x", classes={"yes", "no"}),
        dg.GraphError,
        r"node 'c': classes: expected a list of strings, got a set, which has no order",
    ),
    Case(
        "a demonstration whose output is not a class",
        lambda t: one_node(demonstrations=[{"input": "a", "output": "maybe"}]),
        dg.GraphError,
        r"^node 'answer': demonstrations\[0\]: output 'maybe' is not an answer this node gives "
        r"\(classes: yes, no\)$",
    ),
    Case(
        "a network file with a demonstration whose output is not a class",
        lambda t: dg.Network.load(
            network_file(t, node_document(demonstrations=[{"input": "a", "output": "maybe"}]))
        ),
        dg.GraphError,
        r"net.json: node 'answer': demonstrations\[0\]: output 'maybe' is not an answer",
    ),
    Case(
        "ten million steps",
        lambda t: fit(steps=10**7),
        ValueError,
        r"^steps must be <= 10,000, got 10000000$",
    ),
    Case(
        "an estimate of ten million steps",
        lambda t: _estimate(steps=10**7),
        ValueError,
        r"^steps must be <= 10,000, got 10000000$",
    ),
    Case(
        "stop_when_decided as text",
        lambda t: dg.TrainerOptions(stop_when_decided="no"),
        TypeError,
        r"^stop_when_decided: expected bool \(true or false\), got 'no'$",
    ),
    Case(
        "a decision confidence of one",
        lambda t: dg.TrainerOptions(decision_confidence=1.0),
        ValueError,
        r"^decision_confidence: must be below 1 \(certainty needs every call\), got 1.0$",
    ),
    Case(
        "a decision confidence of a coin toss",
        lambda t: dg.TrainerOptions(decision_confidence=0.5),
        ValueError,
        r"^decision_confidence must be > 0.5, got 0.5$",
    ),
    Case(
        "a decision confidence that is not a number",
        lambda t: dg.TrainerOptions(decision_confidence=float("nan")),
        ValueError,
        r"^decision_confidence: expected a number, got NaN$",
    ),
    Case(
        "a billion prompt samples",
        lambda t: dg.TrainerOptions(num_prompt_samples=10**9),
        ValueError,
        r"^num_prompt_samples must be <= 1,000, got 1000000000$",
    ),
    Case(
        "a memory of a billion parameters",
        lambda t: dg.TrainerOptions(memory_size=10**9),
        ValueError,
        r"^memory_size must be <= 1,000",
    ),
    Case(
        "max_tokens of 10**30",
        lambda t: dg.Network().add_node("g", "x", max_tokens=10**30),
        dg.GraphError,
        r"^node 'g': max_tokens must be <= 1,000,000, got 10{30}$",
    ),
    Case(
        "a generated task of 10**30 examples",
        lambda t: generated_task("navigation", train=10**30),
        dg.DataError,
        r"generated task 'navigation': train must be <= 100,000",
    ),
    Case(
        "a seed that is text",
        lambda t: dg.Engine(MODEL.current, seed="0"),
        TypeError,
        r"^seed: expected int, got '0'$",
    ),
    # -- issue 21, part b: run files, ledgers, caches, URLs ------------------------------------
    Case(
        "a checkpoint_dir that is a file",
        lambda t: fit(checkpoint_dir=_file(t, "ckpt")),
        dg.CheckpointError,
        r"checkpoint_dir .*ckpt: is a file, not a folder",
    ),
    Case(
        "a checkpoint_dir inside a file",
        lambda t: fit(checkpoint_dir=_file(t, "ckpt") / "inner"),
        dg.CheckpointError,
        r"checkpoint_dir .*ckpt/inner: cannot be made",
    ),
    Case(
        "a log_path that is a folder",
        lambda t: fit(log_path=t),
        dg.CheckpointError,
        r"log_path .*: is a folder, not a file",
    ),
    Case(
        "a ledger journal that is not one",
        lambda t: _with_journal(t, b"my notes\n"),
        dg.CheckpointError,
        r"ledger.jsonl: not a dlgraph ledger journal \(line 1 is no header\)",
    ),
    Case(
        "a ledger journal with a negative count",
        lambda t: _with_journal(t, JOURNAL_HEADER + b'["n", "forward", -1, 0, 0, 0, 0, 0, 0, 0]\n'),
        dg.CheckpointError,
        r"ledger.jsonl:2: not a charge \[node, phase, 8 counts\]",
    ),
    Case(
        "a ledger journal with a count that is a bool",
        lambda t: _with_journal(
            t, JOURNAL_HEADER + b'["n", "forward", true, 0, 0, 0, 0, 0, 0, 0]\n'
        ),
        dg.CheckpointError,
        r"ledger.jsonl:2: not a charge",
    ),
    Case(
        "a ledger journal with an endless line",
        lambda t: _with_journal(t, JOURNAL_HEADER + b"[" + b" " * 100_000 + b"]\n[]\n"),
        dg.CheckpointError,
        r"ledger.jsonl:2: a line longer than 65536 bytes",
    ),
    Case(
        "a ledger journal that is a folder",
        lambda t: _with_journal(t, None),
        dg.CheckpointError,
        r"ledger.jsonl: is a folder; a ledger journal is a file",
    ),
    Case(
        "a ledger journal that is a number",
        lambda t: dg.Engine(MODEL.current, journal=5),
        TypeError,
        r"journal: expected a path, got 5",
    ),
    Case(
        "a cache file with the right tables and a trigger over a recursive view",
        lambda t: _with_cache(t, _hostile_cache(t)),
        dg.CacheError,
        r"cache.sqlite: an SQLite database that is not a dlgraph answer cache "
        r"\(trigger slow, view forever differ from a cache's schema\)",
    ),
    Case(
        "a base_url with no scheme",
        lambda t: dg.connect("openai", base_url="127.0.0.1:8000/v1", model="m"),
        dg.BackendUnavailable,
        r"base_url '127.0.0.1:8000/v1': expected http:// or https:// and a host",
    ),
    Case(
        "a base_url with a token and no scheme",
        lambda t: dg.connect("openai", base_url="sk-secret-token@127.0.0.1:8000/v1", model="m"),
        dg.BackendUnavailable,
        r"base_url '\*\*\*@127.0.0.1:8000/v1': expected http://",
    ),
    Case(
        "a sweep's result.json with a key train does not write",
        lambda t: _read_result(t, {"setting": "forged", "seed": 99}),
        dg.ConfigError,
        r"result.json: unknown key 'seed'; delete it",
    ),
    Case(
        "a sweep folder holding a summary dlgraph did not write",
        lambda t: _sweep_into(t, "summary.csv"),
        dg.ConfigError,
        r"project: files dlgraph did not write stand where a sweep writes: summary.csv",
    ),
]

DEEP_LIST: object = "x"
for _ in range(40):
    DEEP_LIST = [DEEP_LIST]


MEMORY_LIMIT_BYTES = 1_500_000_000
"""The address space of the child process that runs the cases (Python and dlgraph included)."""
CASE_TIME_LIMIT_S = 20.0
"""Per case, generous for a loaded 2-core machine: the cases take milliseconds."""


@pytest.fixture(scope="module")
def limited() -> Iterator[LimitedRunner]:
    with LimitedRunner(MEMORY_LIMIT_BYTES, CASE_TIME_LIMIT_S) as runner:
        yield runner


def qualified(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


@attrs.frozen
class Refusal:
    """What a case raised, as the child process saw it."""

    error_classes: tuple[str, ...]
    """The error's class and its bases (qualified names); empty when nothing was raised."""
    message: str
    calls: int
    """Model calls made before the error."""


async def _wait(outcome: Awaitable[None]) -> None:
    await outcome


def refusal(name: str, tmp: str) -> Refusal:
    """Run the case called `name` (in the child process) and report what it raised."""
    case = {case.name: case for case in CASES}[name]
    MODEL.current = ScriptedModel()
    try:
        outcome = case.act(Path(tmp))
        if isinstance(outcome, Awaitable):
            anyio.run(_wait, outcome)
    except BaseException as error:  # reported, whatever it is: MemoryError and RecursionError too
        classes = tuple(qualified(kind) for kind in type(error).__mro__)
        return Refusal(classes, str(error), len(MODEL.current.calls))
    return Refusal((), "", len(MODEL.current.calls))


def test_every_case_has_its_own_name() -> None:
    for table in (CASES, CLI_CASES):
        names = [case.name for case in table]
        assert len(set(names)) == len(names), "cases are found by name in the child process"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_bad_input_is_refused_with_a_message_naming_what_and_where(tmp_path, case, limited) -> None:
    found = limited.run(refusal, case.name, str(tmp_path))
    assert found.error_classes, "accepted: nothing was raised"
    assert qualified(case.error) in found.error_classes, found
    assert re.search(case.message, found.message), found.message
    if not case.after_calls:
        assert found.calls == 0, "no model call may be made for input that can be checked"


# -- the command: one line, `error: FILE: [section] key: what`, exit 2, no traceback -----------

CONFIG = """
[backend]
name = "sim"

[data]
source = "generated"
task = "navigation"
train = 8
dev = 4
test = 4

[train]
steps = 1
batch_size = 2
num_prompt_samples = 1
num_hidden_samples = 1

[output]
dir = "out"
"""


def template_file(template: str, prompt: str = "p") -> bytes:
    """A network file of one class node with this template."""
    node = {"name": "x", "prompt": prompt, "classes": YES_NO, "template": template}
    return json.dumps(node_document() | {"nodes": [node], "edges": [["INPUT", "x"]]}).encode()


def yaml_alias_bomb(levels: int) -> bytes:
    """A few hundred bytes that expand to 9**levels values: each anchor is a list of nine
    aliases of the one before ("billion laughs")."""
    items = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&l{n} [" + ", ".join([f"*l{n - 1}"] * 9) + "]" for n in range(1, levels)]
    return f"backend: {{name: sim}}\ntrain:\n  steps: [{', '.join(items)}]\n".encode()


RESUME = ("train", "{config}", "--resume", "--no-probe")


def before_json(**fields: object) -> Callable[[bytes], bytes]:
    """The run's own before.json with `fields` changed."""
    return lambda original: json.dumps(json.loads(original) | fields).encode()


def replaced_by(content: bytes) -> Callable[[bytes], bytes]:
    return lambda original: content


@attrs.frozen
class CliCase:
    name: str
    replace: tuple[str, str] | None
    """(old, new) text replaced in the config."""
    message: str
    argv: tuple[str, ...] = ("train", "{config}")
    files: tuple[tuple[str, bytes], ...] = ()
    checkpoint: Callable[[dict[str, Any]], None] | None = None
    """Edits the payload of the checkpoint one training step of CONFIG leaves, in a folder
    the command then finds (the checksum is recomputed, as whoever edits one would). `train`
    reads a checkpoint once the run has started, so the error is then the last line."""
    version: int | None = None
    """The checkpoint's format version, when the case states one (2: as main wrote it, the
    payload then has no best_results unless `checkpoint` puts them back)."""
    run_file: tuple[str, Callable[[bytes], bytes]] | None = None
    """A file of the folder one training step of CONFIG leaves and what to make of its bytes
    before the command runs (in that folder, then found as a checkpoint case's is)."""


CLI_CASES = [
    CliCase(
        "a --set without a value",
        None,
        r"'train\.steps': expected section\.key=value",
        ("train", "{config}", "--set", "train.steps"),
    ),
    CliCase(
        "a --set without a section",
        None,
        r"'steps=2': expected section\.key=value",
        ("train", "{config}", "--set", "steps=2"),
    ),
    CliCase(
        "a --set of an unknown section",
        None,
        r"'trian\.steps=2': unknown section \[trian\]",
        ("estimate", "{config}", "--set", "trian.steps=2"),
    ),
    CliCase(
        "a --set of an unknown key",
        None,
        r"run.toml: \[train\] unknown key 'stepz'",
        ("train", "{config}", "--set", "train.stepz=2"),
    ),
    CliCase(
        "a --set of a wrong type",
        None,
        r"run.toml: \[train\] .*steps.*'many'",
        ("eval", "{config}", "--set", "train.steps=many"),
    ),
    CliCase(
        "a --set into a value that is not a table",
        None,
        r"'backend\.name\.x=1': backend\.name is not a table",
        ("train", "{config}", "--set", "backend.name.x=1"),
    ),
    CliCase(
        "an unknown shared limit",
        ("[train]", '[engine]\nrpm = 60\nshared_limit = "redis"\n\n[train]'),
        r"run.toml: \[engine\] unknown shared limit 'redis' \(known: .*\)",
    ),
    CliCase(
        "a shared limit that is not a name",
        ("[train]", "[engine]\nrpm = 60\nshared_limit = true\n\n[train]"),
        r"run.toml: \[engine\] shared_limit: expected a plugin name, got True",
    ),
    CliCase(
        "a shared limit with no limit to share",
        ("[train]", '[engine]\nshared_limit = "ray"\n\n[train]'),
        r"run.toml: \[engine\] shared_limit: give the endpoint's rpm or tpm",
    ),
    CliCase(
        "backend options the backend does not take",
        ('name = "sim"', 'name = "sim"\noptions = {latency = 1}'),
        r"run.toml: \[backend\] .*latency",
    ),
    CliCase(
        "an unknown backend",
        ('name = "sim"', 'name = "gpt9"'),
        r"run.toml: \[backend\] unknown backend 'gpt9'",
    ),
    CliCase(
        "a split size as text",
        ("train = 8", 'train = "lots"'),
        r"run.toml: \[data\] train: expected int, got 'lots'",
    ),
    CliCase(
        "a negative split size",
        ("train = 8", "train = -5"),
        r"run.toml: \[data\] train: must be >= 0, got -5",
    ),
    CliCase(
        "rpm as text",
        ("[train]", '[engine]\nrpm = "fast"\n\n[train]'),
        r"run.toml: \[engine\] rpm: expected float, got 'fast'",
    ),
    CliCase(
        "rpm 0",
        ("[train]", "[engine]\nrpm = 0\n\n[train]"),
        r"run.toml: \[engine\] rpm must be > 0",
    ),
    CliCase(
        "max_concurrency 0",
        ("[train]", "[engine]\nmax_concurrency = 0\n\n[train]"),
        r"run.toml: \[engine\] max_concurrency must be > 0",
    ),
    CliCase(
        "a cache that is a number",
        ("[train]", "[engine]\ncache = 5\n\n[train]"),
        r"run.toml: \[engine\] cache: expected true, false or a file path, got 5",
    ),
    CliCase(
        "a budget of no calls",
        ("[train]", "[engine]\nmax_calls = 0\n\n[train]"),
        r"run.toml: \[engine\] max_calls must be > 0",
    ),
    CliCase(
        "steps below one",
        ("steps = 1", "steps = -2"),
        r"run.toml: \[train\] steps must be > 0, got -2",
    ),
    CliCase(
        "a batch of zero",
        ("batch_size = 2", "batch_size = 0"),
        r"run.toml: \[train\] batch_size must be > 0",
    ),
    CliCase(
        "an option as text",
        ("num_prompt_samples = 1", 'num_prompt_samples = "4"'),
        r"run.toml: \[train\] num_prompt_samples: expected int, got '4'",
    ),
    CliCase(
        "stop_when_decided as a number",
        ("num_prompt_samples = 1", "num_prompt_samples = 1\nstop_when_decided = 0"),
        r"run.toml: \[train\] stop_when_decided: expected bool \(true or false\), got 0",
    ),
    CliCase(
        "a decision confidence above one",
        ("num_prompt_samples = 1", "num_prompt_samples = 1\ndecision_confidence = 1.5"),
        r"run.toml: \[train\] decision_confidence: must be below 1",
    ),
    CliCase(
        "an unknown key", ("steps = 1", "stepz = 1"), r"run.toml: \[train\] unknown key 'stepz'"
    ),
    CliCase(
        "an unknown metric",
        ("steps = 1", 'steps = 1\nmetric = "numbr"'),
        r"run.toml: \[train\] metric: unknown metric 'numbr' \(known: contains, exact, number, "
        r"token_f1",
    ),
    CliCase(
        "a metric given as an importable path",
        ("steps = 1", 'steps = 1\nmetric = "os:system"'),
        r"run.toml: \[train\] metric: unknown metric 'os:system' \(known: ",
    ),
    CliCase(
        "a metric given as a number",
        ("steps = 1", "steps = 1\nmetric = 3"),
        r"run.toml: \[train\] metric: expected str, got 3",
    ),
    CliCase(
        "a backward section without a name",
        ("[train]", "[backward]\nrpm = 5\n\n[train]"),
        r"run.toml: \[backward\] missing key 'name'",
    ),
    CliCase(
        "a backward section with an unknown key",
        ("[train]", '[backward]\nname = "sim"\nmodel = 3\n\n[train]'),
        r"run.toml: \[backward\] unknown key 'model'",
    ),
    CliCase(
        "a backward rpm of 0",
        ("[train]", '[backward]\nname = "sim"\nrpm = 0\n\n[train]'),
        r"run.toml: \[backward\] rpm must be > 0",
    ),
    CliCase(
        "max_demonstrations as text",
        ("num_prompt_samples = 1", 'num_prompt_samples = 1\nmax_demonstrations = "4"'),
        r"run.toml: \[train\] max_demonstrations: expected int",
    ),
    CliCase(
        "an unknown section", ("[output]", "[outptu]"), r"run.toml: unknown section \[outptu\]"
    ),
    CliCase("a TOML syntax error", ("steps = 1", "steps = = 1"), r"run.toml: not valid TOML"),
    CliCase(
        "an unknown data source",
        ('source = "generated"', 'source = "csv"'),
        r"run.toml: \[data\] source: expected generated, paper or jsonl, got 'csv'",
    ),
    CliCase(
        "a network node with a bad field",
        (
            "[output]",
            '[network]\nnodes = [{name = "a", prompt = "A.", max_tokens = 0}]\n\n[output]',
        ),
        r"run.toml: \[network\] node 'a': max_tokens must be > 0",
    ),
    CliCase(
        "a data file with a line that is not UTF-8",
        (
            'source = "generated"\ntask = "navigation"\ntrain = 8\ndev = 4\ntest = 4',
            'source = "jsonl"\ntrain = "train.jsonl"\ndev = "train.jsonl"\nclasses = ["yes", "no"]',
        ),
        r"run.toml: \[data\] .*train.jsonl:2: not UTF-8 text",
        files=(
            (
                "train.jsonl",
                b'{"input": "a", "target": "yes"}\n{"input": "\xff", "target": "no"}\n',
            ),
        ),
    ),
    CliCase(
        "a data file with a target outside the classes",
        (
            'source = "generated"\ntask = "navigation"\ntrain = 8\ndev = 4\ntest = 4',
            'source = "jsonl"\ntrain = "train.jsonl"\ndev = "train.jsonl"\nclasses = ["yes", "no"]',
        ),
        r"train.jsonl:2: target 'maybe' is not a class of node 'answer'",
        files=(
            (
                "train.jsonl",
                b'{"input": "a", "target": "yes"}\n{"input": "b", "target": "maybe"}\n',
            ),
        ),
    ),
    CliCase(
        "a missing config",
        None,
        r"nope.toml: no such config file",
        argv=("train", "{dir}/nope.toml"),
    ),
    CliCase(
        "show of a missing network",
        None,
        r"missing.json: no such file",
        argv=("show", "{dir}/missing.json"),
    ),
    CliCase(
        "show of a JSON list",
        None,
        r"list.json: not a dlgraph network",
        argv=("show", "{dir}/list.json"),
        files=(("list.json", b"[1, 2]"),),
    ),
    CliCase(
        "show of a network that is not UTF-8",
        None,
        r"bytes.json: not UTF-8 text",
        argv=("show", "{dir}/bytes.json"),
        files=(("bytes.json", b"\xff\xfe\x00"),),
    ),
    CliCase(
        "eval --net with a template escape",
        None,
        r"evil.json: node 'x': template refused",
        argv=("eval", "{config}", "--net", "{dir}/evil.json"),
        files=(
            (
                "evil.json",
                json.dumps(
                    {
                        "format": "dlgraph.network",
                        "version": 2,
                        "nodes": [
                            {
                                "name": "x",
                                "prompt": "p",
                                "classes": ["yes|Yes", "no|No"],
                                "template": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
                            }
                        ],
                        "edges": [["INPUT", "x"]],
                    }
                ).encode(),
            ),
        ),
    ),
    CliCase(
        "estimate with an unknown backward model",
        ("[train]", '[backward]\nname = "nope"\n\n[train]'),
        r"run.toml: \[backward\] .*nope",
        argv=("estimate", "{config}"),
    ),
    CliCase(
        "eval --net reaching for a global",
        None,
        r"evil.json: node 'x': template refused: access to attribute '__init__'",
        argv=("eval", "{config}", "--net", "{dir}/evil.json"),
        files=(
            (
                "evil.json",
                json.dumps(
                    {
                        "format": "dlgraph.network",
                        "version": 2,
                        "nodes": [
                            {
                                "name": "x",
                                "prompt": "p",
                                "classes": ["yes|Yes", "no|No"],
                                "template": "{{ cycler.__init__.__globals__.os.system('touch PWNED') }}",
                            }
                        ],
                        "edges": [["INPUT", "x"]],
                    }
                ).encode(),
            ),
        ),
    ),
    # -- bounded work per input: config files and --set values (issue 21) -------------------
    CliCase(
        "a TOML config nested 5,000 levels deep",
        ("steps = 1", "steps = " + "[" * 5000 + "]" * 5000),
        r"run.toml: not valid TOML: containers nested more than 32 levels deep",
    ),
    CliCase(
        "a TOML config with a 5,000-digit number",
        ("steps = 1", "steps = " + "9" * 5000),
        r"run.toml: not valid TOML: a number of more than 4,300 digits",
    ),
    CliCase(
        "an rpm beyond the largest float",
        ("[train]", "[engine]\nrpm = " + "9" * 400 + "\n\n[train]"),
        r"run.toml: \[engine\] rpm: expected a number, got <an integer of 400 digits> \(too large\)",
    ),
    CliCase(
        "an infinite rpm",
        ("[train]", "[engine]\nrpm = inf\n\n[train]"),
        r"run.toml: \[engine\] rpm: expected a finite number, got inf",
    ),
    CliCase(
        "a --set value nested 3,000 levels deep",
        None,
        r"run.toml: \[train\] steps: expected int, got '\[\[\[",
        ("train", "{config}", "--set", "train.steps=" + "[" * 3000 + "]" * 3000),
    ),
    CliCase(
        "a --set with a line break",
        None,
        r"'train.steps=1\\nzzz = 5': a setting is one line",
        ("train", "{config}", "--set", "train.steps=1\nzzz = 5"),
    ),
    CliCase(
        "an instruction of the wrong type where the source does not read it",
        None,
        r"run.toml: \[data\] instruction: expected str, got 5",
        ("train", "{config}", "--set", "data.instruction=5"),
    ),
    CliCase(
        "a hidden node of no tokens where the preset has no hidden node",
        None,
        r"run.toml: \[network\] hidden_max_tokens: must be >= 1",
        ("train", "{config}", "--set", "network.hidden_max_tokens=0"),
    ),
    CliCase(
        "edges without the nodes they join",
        None,
        r"run.toml: \[network\] edges: edges need the nodes they join",
        ("train", "{config}", "--set", 'network.edges=[["INPUT", "answer"]]'),
    ),
    CliCase(
        "a trainable node the network lacks",
        None,
        r"run.toml: \[train\] trainable: unknown node 'nosuch' \(nodes: ",
        ("train", "{config}", "--set", 'train.trainable=["nosuch"]'),
    ),
    CliCase(
        "a training run without dev examples",
        None,
        r"run.toml: \[data\] dev: no examples \(training needs some\)",
        ("train", "{config}", "--set", "data.dev=0"),
    ),
    CliCase(
        "an empty output folder (the config's own folder would take the run's files)",
        None,
        r"run.toml: \[output\] dir: an empty path",
        ("train", "{config}", "--set", 'output.dir=""'),
    ),
    CliCase(
        "an output folder with a NUL byte",
        None,
        r"run.toml: \[output\] dir: a path may not hold a NUL byte, got 'a\\x00b'",
        ("train", "{config}", "--set", 'output.dir="a\\u0000b"'),
    ),
    CliCase(
        "a data file path with a NUL byte",
        (
            'source = "generated"\ntask = "navigation"\ntrain = 8\ndev = 4\ntest = 4',
            'source = "jsonl"\ntrain = "a\\u0000b.jsonl"\ndev = "b.jsonl"\nclasses = ["yes", "no"]',
        ),
        r"run.toml: \[data\] train: a path may not hold a NUL byte",
    ),
    CliCase(
        "a config that is a folder",
        None,
        r"error: .*: is a folder, not a config file",
        argv=("train", "{dir}"),
    ),
    CliCase(
        "eval --net of a folder",
        None,
        r"error: .*: is a folder, not a file",
        argv=("eval", "{config}", "--net", "{dir}"),
    ),
    CliCase(
        "a learning curve written to a folder",
        None,
        r"--plot .*: is a folder; give the path of a PNG file",
        argv=("train", "{config}", "--plot", "{dir}"),
    ),
    CliCase(
        "show of a network nested 100,000 levels deep",
        None,
        r"deep.json: not valid JSON: containers nested more than 32 levels deep",
        argv=("show", "{dir}/deep.json"),
        files=(("deep.json", b"[" * 100_000 + b"]" * 100_000),),
    ),
    CliCase(
        "a YAML alias bomb",
        None,
        r"bomb.yaml: not valid YAML: aliases that expand to more than 100,000 values",
        argv=("train", "{dir}/bomb.yaml"),
        files=(("bomb.yaml", yaml_alias_bomb(levels=9)),),
    ),
    CliCase(
        "a YAML alias that refers to itself",
        None,
        r"loop.yaml: not valid YAML: an alias that refers to itself \(line 3, column",
        argv=("train", "{dir}/loop.yaml"),
        files=(("loop.yaml", b"backend: {name: sim}\ntrain:\n  steps: &a [*a]\n"),),
    ),
    CliCase(
        "a YAML config nested 5,000 levels deep",
        None,
        r"deep.yaml: not valid YAML: containers nested more than 32 levels deep \(line 1",
        argv=("estimate", "{dir}/deep.yaml"),
        files=(("deep.yaml", b"train: " + b"[" * 5000 + b"]" * 5000),),
    ),
    CliCase(
        "a YAML key given twice",
        None,
        r"twice.yaml: not valid YAML: duplicate key 'steps' \(line 4, column 3\)",
        argv=("estimate", "{dir}/twice.yaml"),
        files=(("twice.yaml", b"backend: {name: sim}\ntrain:\n  steps: 1\n  steps: 2\n"),),
    ),
    CliCase(
        "a YAML date that is none",
        None,
        r"date.yaml: not valid YAML: a value it cannot read: 'month must be in 1..12'",
        argv=("estimate", "{dir}/date.yaml"),
        files=(("date.yaml", b"backend: {name: sim}\ntrain:\n  seed: 2024-13-45\n"),),
    ),
    CliCase(
        "a YAML config with a 5,000-digit number",
        None,
        r"long.yaml: not valid YAML: a value it cannot read: a number of more than 4,300 digits",
        argv=("estimate", "{dir}/long.yaml"),
        files=(("long.yaml", b"train:\n  steps: " + b"9" * 5000 + b"\n"),),
    ),
    # -- bounded work per input: templates in files (issue 21) ------------------------------
    CliCase(
        "show of a 150-byte network whose template centres text in 1.5 GB",
        None,
        r"bomb.json: node 'x': template refused: the filter 'center' is not allowed",
        argv=("show", "{dir}/bomb.json"),
        files=(("bomb.json", template_file("{{ 'x'|center(1500000000) }}{{ input }}")),),
    ),
    CliCase(
        "eval --net of a network whose template loops three deep over its prompt",
        None,
        r"loops.json: node 'x': template refused: it takes more than [\d,]+ steps",
        argv=("eval", "{config}", "--net", "{dir}/loops.json"),
        files=(
            (
                "loops.json",
                template_file(
                    "{% for a in prompt %}{% for b in prompt %}{% for c in prompt %}x"
                    "{% endfor %}{% endfor %}{% endfor %}{{ input }}",
                    prompt="p" * 2000,
                ),
            ),
        ),
    ),
    # -- bounded work per input: crafted checkpoints, checked against the run (issue 21) -----
    CliCase(
        "a checkpoint claiming a billion steps with an empty history",
        None,
        r"checkpoint.json: history: steps \[\] do not run 1..1,000,000,000",
        argv=RESUME,
        checkpoint=lambda payload: payload.update(step=10**9, history=[]),
    ),
    CliCase(
        "a checkpoint remembering 4,000 parameters",
        None,
        r"checkpoint.json: memory: node 'answer' remembers 4,000 parameters; "
        r"this run remembers at most 5 \(memory_size\)",
        argv=RESUME,
        checkpoint=lambda payload: payload["memory"].update(
            answer=[[{"prompt": f"Answer {i}.", "demonstrations": []}, -1.0] for i in range(4000)]
        ),
    ),
    CliCase(
        "a checkpoint remembering parameters of a node the run does not have",
        None,
        r"checkpoint.json: memory: unknown node 'ghost'",
        argv=RESUME,
        checkpoint=lambda payload: payload["memory"].update(ghost=[]),
    ),
    CliCase(
        "a checkpoint whose network holds a template bomb",
        None,
        r"checkpoint.json: network: node 'answer': template refused: the filter 'center'",
        argv=RESUME,
        checkpoint=lambda payload: payload["network"]["nodes"][0].update(
            template="{{ 'x'|center(1500000000) }}{{ input }}"
        ),
    ),
    CliCase(
        "a checkpoint whose network has another template",
        None,
        r"checkpoint.json: network: its nodes, templates or edges differ from the run's network",
        argv=RESUME,
        checkpoint=lambda payload: payload["network"]["nodes"][0].update(
            template="{{ prompt }} {{ input }}"
        ),
    ),
    CliCase(
        "a checkpoint whose best network carries 1,000 demonstrations",
        None,
        r"checkpoint.json: best_network: node 'answer' carries 1,000 demonstrations; "
        r"this run's carry at most 4 \(max_demonstrations\)",
        argv=RESUME,
        checkpoint=lambda payload: payload["best_network"]["nodes"][0].update(
            demonstrations=[{"input": f"x{i}", "output": "yes"} for i in range(1000)]
        ),
    ),
    CliCase(
        "a checkpoint counting more evaluations than steps",
        None,
        r"checkpoint.json: evaluations_since_best: 5 evaluations in 1 steps",
        argv=RESUME,
        checkpoint=lambda payload: payload.update(evaluations_since_best=5),
    ),
    CliCase(
        "a checkpoint whose best network has a result for one dev example",
        None,
        r"checkpoint.json: best_results: 1 results for \d+ dev examples",
        argv=RESUME,
        checkpoint=lambda payload: payload.update(best_results=[1.0]),
    ),
    *(
        CliCase(
            f"a run folder whose {name}",
            None,
            message,
            argv=RESUME,
            run_file=("before.json", edit),
        )
        for name, edit, message in [
            (
                "before.json is not JSON",
                replaced_by(b"{"),
                r"out/before\.json: Expecting property name",
            ),
            (
                "before.json is not UTF-8",
                replaced_by(b"\xff{}"),
                r"out/before\.json: not UTF-8 text",
            ),
            (
                "before.json nests without end",
                replaced_by(b"[" * 60_000),
                r"out/before\.json: .*nest",
            ),
            (
                "before.json is larger than a run writes",
                replaced_by(b" " * 70_000 + b"{}"),
                r"out/before\.json: larger than 65,536 bytes",
            ),
            (
                "before.json is a list",
                replaced_by(b"[]"),
                r"expected an object of metric, examples, digest and scores",
            ),
            (
                "before.json names its metric in a list",
                before_json(metric=["exact"]),
                r"before\.json: metric: expected a metric's name, got \['exact'\]",
            ),
            (
                "before.json counts examples as fractions",
                before_json(examples={"dev": 4.0, "test": 4}),
                r"before\.json: examples: ",
            ),
            (
                "before.json was measured on another network or other examples",
                before_json(digest="0" * 64),
                r"before\.json: measured on another network, model or other examples than this run's",
            ),
            (
                "before.json was measured under another metric",
                before_json(metric="f1"),
                r"before\.json: metric: 'f1', where this run's is 'exact' \(delete it",
            ),
            (
                "before.json counts other examples",
                before_json(examples={"dev": 5, "test": 4}),
                r"before\.json: examples: .*'dev': 5.*, where this run's splits hold",
            ),
            (
                "before.json counts examples as booleans",
                before_json(examples={"dev": True, "test": 4}),
                r"before\.json: examples: ",
            ),
            (
                "before.json has a score that is no number",
                before_json(scores={"dev": float("nan"), "test": 0.5}),
                r"before\.json: 'scores': 'dev' must be dev or test with a finite score",
            ),
            (
                "before.json misses a split",
                before_json(scores={"dev": 0.5}),
                r"before\.json: scores: \['dev'\], where this run has \['dev', 'test'\]",
            ),
        ]
    ),
    CliCase(
        "a version-2 checkpoint that has best results",
        None,
        r"checkpoint.json: malformed checkpoint \(missing or unknown: best_results\)",
        argv=RESUME,
        checkpoint=lambda payload: payload.update(best_results=[1.0]),
        version=2,
    ),
    CliCase(
        "a version-2 checkpoint whose ledger is an object",
        None,
        r"checkpoint.json: ledger: expected a list of objects",
        argv=RESUME,
        checkpoint=lambda payload: payload.update(ledger={}),
        version=2,
    ),
    CliCase(
        "a version-2 checkpoint whose history skips a step",
        None,
        r"checkpoint.json: history: steps \[\] do not run 1..1",
        argv=RESUME,
        checkpoint=lambda payload: payload.update(history=[]),
        version=2,
    ),
    CliCase(
        "a checkpoint of a version to come",
        None,
        r"checkpoint.json: checkpoint version 4, expected 3 \(or 2, which is upgraded\)",
        argv=RESUME,
        checkpoint=lambda payload: None,
        version=4,
    ),
    CliCase(
        "a checkpoint whose best results are not its best score",
        None,
        r"checkpoint.json: best_results: their mean 100 is not best_score",
        argv=RESUME,
        checkpoint=lambda payload: payload.update(
            best_results=[100.0] * len(payload["best_results"])
        ),
    ),
    # -- bounded work per input: values in a config (issue 21) ------------------------------
    CliCase(
        "an rpm of one call in 100,000 years",
        ("[train]", "[engine]\nrpm = 1e-9\n\n[train]"),
        r"run.toml: \[engine\] rpm must be >= 1 per minute",
    ),
    CliCase(
        "an estimate of ten million steps",
        None,
        r"run.toml: \[train\] steps must be <= 10,000, got 10000000",
        ("estimate", "{config}", "--set", "train.steps=10000000"),
    ),
    CliCase(
        "a generated task of 10**30 examples",
        ("train = 8", "train = 1" + "0" * 30),
        r"run.toml: \[data\] generated task 'navigation': train must be <= 100,000",
    ),
    CliCase(
        "a network node whose demonstration output is not a class",
        (
            "[output]",
            '[network]\nnodes = [{name = "a", prompt = "A.", classes = ["yes", "no"], '
            'demonstrations = [{input = "x", output = "maybe"}]}]\n'
            'edges = [["INPUT", "a"]]\n\n[output]',
        ),
        r"run.toml: \[network\] node 'a': demonstrations\[0\]: output 'maybe' is not an answer",
    ),
    # -- issue 21, part b: run folders ---------------------------------------------------------
    CliCase(
        "an output folder holding files dlgraph did not write",
        None,
        r"out: files dlgraph did not write stand where a run writes: "
        r"checkpoint/my_model\.pt, steps\.jsonl; move them",
        files=(("out/checkpoint/my_model.pt", b"weights"), ("out/steps.jsonl", b"notes\n")),
    ),
    CliCase(
        "an output folder whose checkpoint folder is a file",
        None,
        r"out: files dlgraph did not write stand where a run writes: checkpoint;",
        files=(("out/checkpoint", b"not a folder"),),
    ),
    CliCase(
        "a base_url with no scheme",
        (
            'name = "sim"',
            'name = "openai"\noptions = {base_url = "localhost:8000/v1", model = "m"}',
        ),
        r"run.toml: \[backend\] base_url 'localhost:8000/v1': expected http:// or https://",
    ),
    CliCase(
        "an output folder that is a file",
        ('dir = "out"', 'dir = "run.toml"'),
        r"run.toml: is a file; a run needs a folder",
    ),
    CliCase(
        "an output folder whose manifest lists a file outside the run",
        None,
        r"dlgraph-files.json: lists \.\./run\.toml, which a run never writes",
        files=(
            (
                "out/dlgraph-files.json",
                b'{"format": "dlgraph.files", "version": 1, "files": ["../run.toml"]}',
            ),
        ),
    ),
]


@attrs.frozen
class CommandRun:
    """What the command did in the child process."""

    exit_code: int | str
    """The code `main` returned, or the error that escaped it."""
    out: str
    files_kept: bool
    """Every file the case put in place is as it was: a refused command changes nothing."""


_TRAINED: dict[str, Path] = {}
"""The folder of one training step of CONFIG, made once per child process."""


def _crafted_checkpoint(
    folder: Path, edit: Callable[[dict[str, Any]], None], version: int | None = None
) -> None:
    """`folder/out` as one training step of CONFIG left it, its checkpoint then edited (made
    `version`, first, when given: version 2 has no best_results)."""
    if "out" not in _TRAINED:
        trained = Path(tempfile.mkdtemp()) / "run.toml"
        trained.write_text(CONFIG)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["train", str(trained), "--no-probe"]) == 0
        _TRAINED["out"] = trained.parent / "out"
    shutil.copytree(_TRAINED["out"], folder / "out")
    path = folder / "out" / "checkpoint" / "checkpoint.json"
    document = json.loads(path.read_text())
    if version is not None:
        document["version"] = version
    if version == 2:
        del document["payload"]["best_results"]
    edit(document["payload"])
    canonical = json.dumps(document["payload"], sort_keys=True, separators=(",", ":"))
    document["sha256"] = hashlib.sha256(canonical.encode()).hexdigest()
    path.write_text(json.dumps(document))


def _unchanged(payload: dict[str, Any]) -> None:
    return None


def command_run(name: str, tmp: str) -> CommandRun:
    """Run the command case called `name` (in the child process) in the folder `tmp`."""
    case = {case.name: case for case in CLI_CASES}[name]
    folder = Path(tmp)
    text = CONFIG if case.replace is None else CONFIG.replace(*case.replace)
    assert case.replace is None or text != CONFIG, "the replacement must change the config"
    config = folder / "run.toml"
    config.write_text(text)
    for file_name, content in case.files:
        (folder / file_name).parent.mkdir(parents=True, exist_ok=True)
        (folder / file_name).write_bytes(content)
    if case.checkpoint is not None or case.run_file is not None:
        _crafted_checkpoint(folder, case.checkpoint or _unchanged, case.version)
    given = list(case.files)
    if case.run_file is not None:
        name, edit = case.run_file
        path = folder / "out" / name
        path.write_bytes(edit(path.read_bytes()))
        given.append((f"out/{name}", path.read_bytes()))
    before = {file_name: (folder / file_name).read_bytes() for file_name, _ in given}
    argv = [arg.format(config=config, dir=folder) for arg in case.argv]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code: int | str = main(argv)
        except BaseException as error:  # a traceback is a failure of its own; report it
            code = f"{type(error).__name__}: {str(error)[:500]}"
    after = {file_name: (folder / file_name).read_bytes() for file_name, _ in given}
    return CommandRun(code, out.getvalue(), files_kept=after == before)


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda case: case.name)
def test_the_command_reports_bad_input_in_one_line_and_exits_2(tmp_path, case, limited) -> None:
    run = limited.run(command_run, case.name, str(tmp_path))
    assert run.exit_code == 2, run
    out = run.out
    lines = [line for line in out.splitlines() if line.strip()]
    if case.checkpoint is not None or case.run_file is not None:
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert re.search(case.message, lines[0]), lines[0]
    assert "Traceback" not in out
    assert not (Path.cwd() / "PWNED").exists() and not (tmp_path / "PWNED").exists()
    assert run.files_kept, "a refused command changed a file it was given"


def test_train_checks_its_data_before_deleting_the_last_run_or_calling_the_model(
    tmp_path, capsys
) -> None:
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    assert main(["train", str(config)]) == 0
    checkpoint = tmp_path / "out" / "checkpoint" / "checkpoint.json"
    log = tmp_path / "out" / "steps.jsonl"
    before = (checkpoint.read_bytes(), log.read_bytes())
    (tmp_path / "train.jsonl").write_text('{"input": "a", "target": "maybe"}\n')
    config.write_text(
        CONFIG.replace(
            'source = "generated"\ntask = "navigation"\ntrain = 8\ndev = 4\ntest = 4',
            'source = "jsonl"\ntrain = "train.jsonl"\ndev = "train.jsonl"\nclasses = ["yes", "no"]',
        )
    )
    capsys.readouterr()
    assert main(["train", str(config)]) == 2
    assert "train.jsonl:1: target 'maybe'" in capsys.readouterr().out
    assert (checkpoint.read_bytes(), log.read_bytes()) == before


def test_verbose_adds_the_traceback_to_the_one_line_error(tmp_path, capsys) -> None:
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.replace("steps = 1", "steps = -2"))
    assert main(["-v", "train", str(config)]) == 2
    out = capsys.readouterr().out
    assert "Traceback" in out and "error: " in out


def test_show_prints_every_nodes_template_so_a_file_can_be_inspected_first(
    tmp_path, capsys
) -> None:
    net = dg.Network()
    net.add_node("x", prompt="p", template="{{ prompt }}\nSay: {{ input }}")
    net.add_node("answer", prompt="Answer.", classes=YES_NO)
    net.add_edge(dg.INPUT, "x")
    net.add_edge("x", "answer")
    net.save(tmp_path / "net.json")
    assert main(["show", str(tmp_path / "net.json")]) == 0
    out = capsys.readouterr().out
    assert "Say: {{ input }}" in out and "template of x (custom" in out
    assert "template of answer (built-in classify)" in out


# -- what `show` prints of a file it has not trusted yet (issue 21) ---------------------------


def test_show_prints_text_from_a_file_as_text_never_as_markup_or_terminal_codes(
    tmp_path, capsys
) -> None:
    name = "[bold red]x\x1b]52;c;SGVsbG8=\x07\x1b[2J"
    net = dg.Network()
    net.add_node(
        name, prompt="p\x1b[31m\u202e", template="{{ prompt }}\x1b]8;;http://e\x07{{ input }}"
    )
    net.add_edge(dg.INPUT, name)
    net.save(tmp_path / "net.json")
    assert main(["show", str(tmp_path / "net.json")]) == 0
    out = capsys.readouterr().out
    for code in ("\x1b]52", "\x1b[2J", "\x1b[31m", "\x1b]8", "\x07", "\u202e"):
        assert code not in out, f"{code!r} reached the terminal"
    assert "[bold red]x\\x1b]52;c;SGVsbG8=\\x07\\x1b[2J" in out  # shown, not obeyed
    assert "p\\x1b[31m\\u202e" in out


def test_show_skips_a_step_log_line_nested_too_deep_and_says_so(tmp_path, capsys) -> None:
    one_node().save(tmp_path / "net.json")
    (tmp_path / "steps.jsonl").write_text("[" * 100_000 + "\n")
    assert main(["show", str(tmp_path / "net.json")]) == 0
    assert "steps.jsonl:1: not a whole step record; skipped" in capsys.readouterr().out


# -- issue 21, part b: what a kill leaves behind -------------------------------------------------

KILLED_BETWEEN_WRITE_AND_RENAME = """
import os, signal, sys
from dlgraph._files import write_atomic
os.replace = lambda *paths: os.kill(os.getpid(), signal.SIGKILL)
write_atomic(sys.argv[1], "half of a step log")
"""


async def test_a_temporary_a_kill_left_is_removed_and_files_that_resemble_one_are_kept(
    tmp_path,
) -> None:
    log = tmp_path / "steps.jsonl"
    killed = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_WRITE_AND_RENAME, str(log)])
    assert killed.returncode == -signal.SIGKILL
    (leftover,) = tmp_path.glob(".steps.jsonl.*")
    look_alikes = [tmp_path / ".steps.jsonl.orig", tmp_path / ".steps.jsonl.abcd1234"]
    for path in look_alikes:
        path.write_text("the user's")
    MODEL.current = ScriptedModel()
    await fit(log_path=log, checkpoint_dir=tmp_path / "checkpoint")
    assert not leftover.exists()
    assert [path.read_text() for path in look_alikes] == ["the user's"] * 2
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1]
