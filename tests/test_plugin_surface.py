"""What `dlgraph.plugin` promises plugins: the token bucket a shared limit keeps, the one
entry-point loader, and a training run from a config with its one result record."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_cli import SIM_CONFIG

import dlgraph as dg
from dlgraph import plugin

# -- the token bucket ------------------------------------------------------------------------


def test_token_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    bucket = plugin.TokenBucket.per_minute(120, burst_s=1.0, now=0.0)  # 2 a second, 2 at once
    bucket.take(2)
    assert bucket.wait_s(1, now=0.0) == pytest.approx(0.5)
    bucket.refill(now=10.0)
    assert bucket.level == pytest.approx(2.0)


def test_token_bucket_takes_back_what_was_given_never_above_capacity() -> None:
    bucket = plugin.TokenBucket.per_minute(60, burst_s=5.0, now=0.0)  # capacity 5
    bucket.take(4)
    bucket.add(10)
    assert bucket.level == 5.0
    bucket.add(-7)  # usage above the estimate: a debt the refill pays first
    assert bucket.level == -2.0


def test_token_bucket_holds_no_more_than_the_server_says_remains() -> None:
    bucket = plugin.TokenBucket.per_minute(60, burst_s=5.0, now=0.0)
    bucket.cap(1.0, now=0.0)
    assert bucket.level == 1.0
    bucket.cap(3.0, now=0.0)  # a cap never adds
    assert bucket.level == 1.0
    bucket.empty(now=0.0)
    assert bucket.level == 0.0
    bucket.cap(3.0, now=10.0)  # what refilled in the meantime is capped too
    bucket.refill(now=10.0)
    assert bucket.level == 3.0


def test_token_bucket_level_is_not_set_from_outside() -> None:
    bucket = plugin.TokenBucket.per_minute(60, burst_s=1.0, now=0.0)
    with pytest.raises(AttributeError):
        bucket.level = 3.0  # type: ignore[misc]


# -- the entry-point loader ------------------------------------------------------------------


def test_the_loader_names_the_installed_entries_when_one_is_unknown() -> None:
    with pytest.raises(dg.UnknownBackend, match=r"unknown shared limit 'nowhere' \(known: ray\)"):
        plugin.SHARED_LIMITS.load("nowhere")
    with pytest.raises(dg.UnknownBackend, match=r"unknown backend 'gpt9' \(known: .*sim"):
        plugin.BACKENDS.load("gpt9")


def test_the_loader_serves_all_three_groups() -> None:
    assert {"sim", "openai", "llamacpp", "ray"} <= set(plugin.BACKENDS.entries())
    assert callable(plugin.SHARED_LIMITS.load("ray"))
    commands = argparse.ArgumentParser().add_subparsers()
    for add_command in plugin.COMMANDS.load_all():
        add_command(commands)
    assert "sweep" in commands.choices


# -- a training run from a config ------------------------------------------------------------


class Followed(plugin.RunHooks):
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def started(self, trainer: dg.VariationalTrainer, task: plugin.Task) -> None:
        self.seen.append(f"started {task.name}")

    @contextmanager
    def training(self, steps: int) -> Iterator[Callable[[dg.StepRecord], None]]:
        yield lambda record: self.seen.append(f"step {record.step}")


async def test_a_run_from_a_config_writes_the_result_it_returns(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(SIM_CONFIG)
    config = plugin.RunConfig.read(tmp_path / "run.toml", ["train.steps=2"])
    hooks = Followed()
    trained = await plugin.train_run(config, out=tmp_path / "elsewhere", hooks=hooks)
    assert hooks.seen == ["started navigation", "step 1", "step 2"]
    assert plugin.RunResult.read(tmp_path / "elsewhere" / "result.json") == trained.result
    assert (
        trained.result.steps == 2 and trained.result.calls == trained.ledgers["forward"].total.calls
    )
    assert not (tmp_path / "out").exists()  # `out` wins over the config's folder


def test_a_result_record_reads_back_what_it_wrote(tmp_path: Path) -> None:
    result = plugin.RunResult(
        task="t",
        metric="number",
        before={"dev": 0.25},
        after={"dev": 0.5, "test": 0.75},
        best_dev=0.5,
        steps=3,
        stopped="steps",
        calls=12,
        tokens=340,
        cost=0.0,
        seconds=1.5,
        by_model={"forward": {"calls": 12.0}},
    )
    result.write(tmp_path / "result.json")
    assert plugin.RunResult.read(tmp_path / "result.json") == result
    assert list(json.loads((tmp_path / "result.json").read_text())) == [
        "task",
        "metric",
        "before",
        "after",
        "best_dev",
        "steps",
        "stopped",
        "calls",
        "tokens",
        "cost",
        "seconds",
        "by_model",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"best_dev": "high"}, "'best_dev' must be a finite score or null"),
        ({"metric": 3}, "'metric' must be text"),
        ({"before": {"train": 0.5}}, "'before': 'train' must be dev or test"),
        ({"stopped": 3}, "'stopped' must be text"),
        ({"seconds": -1}, "'seconds' must be a number >= 0"),
        ({"by_model": {"forward": {"calls": "many"}}}, "'by_model' must map engine names"),
    ],
)
def test_a_result_file_with_a_field_no_run_writes_is_refused_naming_file_and_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    written = {"after": {"dev": 0.5}, "calls": 1, "tokens": 1, "cost": 0, "steps": 1} | change
    (tmp_path / "result.json").write_text(json.dumps(written))
    with pytest.raises(dg.ConfigError, match=re.escape(f"result.json: {message}")):
        plugin.RunResult.read(tmp_path / "result.json")
