"""The bad-input corpus: every input a new user (or a hostile file) might give, each refused
with the right error class and a message naming what is wrong and where, before any model
call when it can be known before one. Grow it with every feature.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import pytest
from dlgraph_sim import ScriptedModel

import dlgraph as dg
from dlgraph.cli import main
from dlgraph.data import generated_task, read_jsonl

YES_NO = ["yes|Yes", "no|No"]


def one_node(**options: object) -> dg.Network:
    net = dg.Network()
    net.add_node("answer", prompt="Answer.", **({"classes": YES_NO} | options))  # type: ignore[arg-type]
    net.add_edge(dg.INPUT, "answer")
    return net


def data(*pairs: tuple[str, str]) -> list[dg.Example]:
    return [dg.Example(x, y) for x, y in pairs]


GOOD = data(("a", "yes"), ("b", "no"))


async def fit(**overrides: object) -> None:
    settings = {"train": GOOD, "dev": GOOD, "steps": 1, "batch_size": 2} | overrides
    async with dg.Engine(MODEL.current) as engine:
        trainer = dg.VariationalTrainer(one_node(), engine, num_prompt_samples=1)
        await trainer.fit(**settings)  # type: ignore[arg-type]


async def classify(classes: object) -> None:
    async with dg.Engine(MODEL.current) as engine:
        await engine.classify("Is it?", classes)  # type: ignore[arg-type]


async def forward(net: dg.Network, xs: object) -> None:
    async with dg.Engine(MODEL.current) as engine:
        await net.forward(engine, xs)  # type: ignore[arg-type]


async def pace(examples: list[dg.Example]) -> None:
    async with dg.Engine(MODEL.current) as engine:
        await dg.VariationalTrainer(one_node(), engine).pace(examples)


async def evaluate(examples: list[dg.Example]) -> None:
    async with dg.Engine(MODEL.current) as engine:
        await dg.evaluate(one_node(), engine, examples)


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


def _template(template: str) -> dg.Network:
    net = dg.Network()
    net.add_node("x", prompt="p", template=template)
    net.add_edge(dg.INPUT, "x")
    return net


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
        "a network file that is a folder",
        lambda t: dg.Network.load(t),
        dg.GraphError,
        r"is a folder, not a network file",
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
        r"node 'x': template variable 'cycler' is supplied by no parent",
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
        r"node 'x': template refused: access to attribute '__init__'",
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
        r"node 'x': template refused: a repetition this large",
    ),
    Case(
        "a template building a huge string, the count first, and printing its length",
        lambda t: forward(_template('{{ (100000000 * "a") | length }}'), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: a repetition this large",
    ),
    Case(
        "a template building a huge number",
        lambda t: forward(_template("{{ (10 ** 100000) | string | length }}"), ["x"]),
        dg.GraphError,
        r"node 'x': template refused: a power this large",
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
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
async def test_bad_input_is_refused_with_a_message_naming_what_and_where(tmp_path, case) -> None:
    MODEL.current = ScriptedModel()
    with pytest.raises(case.error) as caught:
        outcome = case.act(tmp_path)
        if isinstance(outcome, Awaitable):
            await outcome
    assert re.search(case.message, str(caught.value)), str(caught.value)
    assert MODEL.current.calls == [], "no model call may be made for input that can be checked"


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


@attrs.frozen
class CliCase:
    name: str
    replace: tuple[str, str] | None
    """(old, new) text replaced in the config."""
    message: str
    argv: tuple[str, ...] = ("train", "{config}")
    files: tuple[tuple[str, bytes], ...] = ()


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
        "an unknown key", ("steps = 1", "stepz = 1"), r"run.toml: \[train\] unknown key 'stepz'"
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
        r"evil.json: node 'x': template variable 'cycler'",
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
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda case: case.name)
def test_the_command_reports_bad_input_in_one_line_and_exits_2(tmp_path, capsys, case) -> None:
    text = CONFIG if case.replace is None else CONFIG.replace(*case.replace)
    assert case.replace is None or text != CONFIG, "the replacement must change the config"
    config = tmp_path / "run.toml"
    config.write_text(text)
    for name, content in case.files:
        (tmp_path / name).write_bytes(content)
    argv = [arg.format(config=config, dir=tmp_path) for arg in case.argv]
    assert main(argv) == 2
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert re.search(case.message, lines[0]), lines[0]
    assert "Traceback" not in out
    assert not (Path.cwd() / "PWNED").exists() and not (tmp_path / "PWNED").exists()


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
