"""The ledger's journal: every call is recorded as it is sent, so that a run's totals and
budget count the calls of the processes before it, a kill mid-line loses no more than that
line, and a file that is not a journal is refused and left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from dlgraph_sim import ScriptedModel

import dlgraph as dg
from dlgraph.cli import main
from dlgraph.engine.journal import read_journal


async def spend(journal, prompts, budget=None) -> dg.LedgerSnapshot:
    async with dg.Engine(
        ScriptedModel(generate=lambda r: "ok"), journal=journal, budget=budget or dg.Budget()
    ) as engine:
        for prompt in prompts:
            await engine.generate(prompt, node="n")
        return engine.statistics()


async def test_an_engine_on_a_journal_counts_the_calls_of_the_process_before_it(tmp_path) -> None:
    journal = tmp_path / "ledger.jsonl"
    await spend(journal, [f"q{i}" for i in range(5)])
    async with dg.Engine(ScriptedModel(), journal=journal) as engine:
        assert engine.statistics().total.calls == 5
        assert engine.statistics().by_key[("n", "forward")].calls == 5
    assert read_journal(journal).total.calls == 5


async def test_the_budget_counts_the_calls_an_earlier_process_spent(tmp_path) -> None:
    journal = tmp_path / "ledger.jsonl"
    await spend(journal, ["a", "b", "c"])
    with pytest.raises(dg.BudgetExhausted, match="call budget of 4 spent"):
        await spend(journal, ["d", "e"], budget=dg.Budget(max_calls=4))
    assert read_journal(journal).total.calls == 4


async def test_a_call_cancelled_in_flight_is_counted_as_sent_and_not_as_an_error(
    tmp_path,
) -> None:
    journal = tmp_path / "ledger.jsonl"
    model = ScriptedModel(latency_s=3600)
    async with dg.Engine(model, journal=journal) as engine:
        async with anyio.create_task_group() as group:
            group.start_soon(engine.generate, "slow")
            await anyio.wait_all_tasks_blocked()
            group.cancel_scope.cancel()
        total = engine.statistics().total
    assert (total.calls, total.errors) == (1, 0)
    assert read_journal(journal).total.calls == 1


async def test_a_line_a_kill_cut_short_is_dropped_and_new_lines_stay_whole(tmp_path) -> None:
    journal = tmp_path / "ledger.jsonl"
    await spend(journal, ["a", "b"])
    with journal.open("ab") as stream:
        stream.write(b'["n", "forward", 1, 1, 0')  # a kill in the middle of a write
    snapshot = await spend(journal, ["c"])
    assert snapshot.total.calls == 3
    lines = journal.read_text().splitlines()
    assert all(isinstance(json.loads(line), dict | list) for line in lines)
    assert read_journal(journal).total == snapshot.total


async def test_tokens_and_errors_reach_the_journal_as_the_ledger_counts_them(tmp_path) -> None:
    journal = tmp_path / "ledger.jsonl"
    failing = ScriptedModel(
        generate=lambda r: "four words of answer",
        fault=lambda request, number: dg.TransientError("flaky") if number == 0 else None,
    )
    policy = dg.RetryPolicy(deadline_s=5, initial_wait_s=0.001, max_wait_s=0.001)
    async with dg.Engine(failing, journal=journal, retry=policy) as engine:
        await engine.generate("q", node="n")
        counted = engine.statistics()
    assert counted.total.calls == 2 and counted.total.errors == 1 and counted.total.retries == 1
    assert read_journal(journal).by_key == counted.by_key


@pytest.mark.parametrize(
    "content",
    [
        b"my notes\n",
        b'{"format": "dlgraph.checkpoint", "version": 2}\n',
        b"",
        b'{"format": "dlgraph.ledger", "version": 1, "counters": ["calls"]}\n',
    ],
    ids=["text", "another dlgraph file", "empty", "other counters"],
)
async def test_a_file_that_is_not_a_journal_is_refused_and_left_as_it_was(
    tmp_path, content
) -> None:
    journal = tmp_path / "ledger.jsonl"
    journal.write_bytes(content)
    model = ScriptedModel()
    with pytest.raises(dg.CheckpointError, match="ledger.jsonl: not a dlgraph ledger journal"):
        async with dg.Engine(model, journal=journal) as engine:
            await engine.generate("x")
    assert journal.read_bytes() == content and model.calls == []


RUN = """
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


def test_a_resumed_command_counts_the_calls_before_it_in_its_result_and_its_budget(
    tmp_path, capsys
) -> None:
    config = tmp_path / "run.toml"
    config.write_text(RUN)
    assert main(["train", str(config), "--no-probe"]) == 0
    first = json.loads((tmp_path / "out" / "result.json").read_text())["calls"]
    assert main(["train", str(config), "--no-probe", "--resume"]) == 0
    again = json.loads((tmp_path / "out" / "result.json").read_text())["calls"]
    assert again > first  # the resumed process evaluated again, on top of the first's calls
    capsys.readouterr()
    spent = ["--set", f"engine.max_calls={again}"]
    assert main(["train", str(config), "--no-probe", "--resume", *spent]) == 2
    assert f"call budget of {again} spent ({again} calls)" in capsys.readouterr().out


# -- what a snapshot says ---------------------------------------------------------------------


async def test_a_call_is_one_http_request_and_its_tokens_are_prompt_and_answer_together() -> None:
    model = ScriptedModel(generate=lambda r: "a longer answer of several words")
    async with dg.Engine(model) as engine:
        await engine.generate("a prompt of some length", node="n")
        total = engine.statistics().total
    assert (total.calls, total.http_requests) == (1, 1)
    assert total.tokens_in > 0 and total.tokens_out > 0
    assert total.tokens == total.tokens_in + total.tokens_out


async def test_a_successful_call_is_no_error_and_each_429_is_one_rate_limited_call() -> None:
    model = ScriptedModel(
        generate=lambda r: "ok",
        fault=lambda request, number: (
            dg.RateLimited("429", retry_after_s=0) if number == 0 else None
        ),
    )
    policy = dg.RetryPolicy(deadline_s=5, initial_wait_s=0.001, max_wait_s=0.001)
    async with dg.Engine(model, retry=policy, limits=dg.RateLimits(pause_jitter=0)) as engine:
        await engine.generate("refused once", node="a")
        await engine.generate("never refused", node="b")
        snapshot = engine.statistics()
    refused, fine = snapshot.by_key[("a", "forward")], snapshot.by_key[("b", "forward")]
    assert (refused.calls, refused.rate_limited, refused.errors) == (2, 1, 1)
    assert (fine.calls, fine.rate_limited, fine.errors) == (1, 0, 0)


async def test_the_usage_report_lists_nodes_in_order_whatever_order_they_called_in() -> None:
    async with dg.Engine(ScriptedModel(generate=lambda r: "ok")) as engine:
        for node in ["zeta", "alpha", "mid"]:
            await engine.generate(f"from {node}", node=node)
        report = engine.statistics().to_json()
    assert [row["node"] for row in report] == ["alpha", "mid", "zeta"]


async def test_a_price_of_cents_per_million_tokens_costs_the_tokens_times_the_price() -> None:
    price = dg.Price(input_per_million=0.15, output_per_million=0.6)  # below one per million
    async with dg.Engine(ScriptedModel(generate=lambda r: "an answer"), price=price) as engine:
        await engine.generate("a question to price")
        total = engine.statistics().total
    expected = (total.tokens_in * 0.15 + total.tokens_out * 0.6) / 1_000_000
    assert total.cost == pytest.approx(expected, rel=1e-12)
    assert dg.Price(0).cost(10**6, 10**6) == 0.0  # a free model
    with pytest.raises(ValueError):
        dg.Price(-1.0)
    with pytest.raises(ValueError):
        dg.Price(1.0, output_per_million=-1.0)


async def test_a_budget_of_one_token_allows_the_first_call_and_refuses_the_next() -> None:
    async with dg.Engine(
        ScriptedModel(generate=lambda r: "ok"), budget=dg.Budget(max_tokens=1)
    ) as engine:
        await engine.generate("first")
        with pytest.raises(dg.BudgetExhausted, match="token budget of 1 spent"):
            await engine.generate("second")


async def test_the_token_budget_counts_the_prompt_and_answer_tokens_of_an_earlier_process(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "ledger.jsonl"
    model = ScriptedModel(generate=lambda r: "an answer much longer than the prompt was")
    async with dg.Engine(model, journal=journal) as engine:
        await engine.generate("short", node="n")
        spent = engine.statistics().total
    assert spent.tokens_out > 0
    budget = dg.Budget(max_tokens=spent.tokens_in + spent.tokens_out)
    async with dg.Engine(model, journal=journal, budget=budget) as engine:
        with pytest.raises(dg.BudgetExhausted, match="token budget"):
            await engine.generate("more", node="n")
