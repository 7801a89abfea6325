"""`dlgraph sweep` on a local Ray with the scripted model: the table, a killed worker, a
re-run, and bad grids."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from dlgraph_ray import SharedLimit
from dlgraph_ray.sweep import SweepResult, sweep
from dlgraph_sim.server import ServerConfig, ServerProcess

import dlgraph as dg
from dlgraph import cli

CONFIG = """
[backend]
name = "sim"
options = {{latency_s = {latency}}}

[engine]
cache = false

[data]
source = "generated"
task = "navigation"
train = 12
dev = 6
test = 6

[network]
kind = "dln2"
hidden_max_tokens = 8

[train]
steps = {steps}
batch_size = 4
num_prompt_samples = 2
num_hidden_samples = 2

[output]
dir = "out"
"""

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray"), pytest.mark.timeout(300)]


def write_config(folder: Path, steps: int = 2, latency: float = 0.0) -> Path:
    path = folder / "run.toml"
    path.write_text(CONFIG.format(steps=steps, latency=latency))
    return path


def files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(path.relative_to(root)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.parent != root
    }


def test_a_sweep_of_two_settings_and_two_seeds_tabulates_each_trials_own_result(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    grid = ["train.batch_size=2,4"]
    result = sweep(config, grid, [0, 1], echo=lambda line: None)
    assert result.ran == 4 and result.root == tmp_path / "out-sweep"
    assert [(o.trial.setting, o.trial.seed) for o in result.outcomes] == [
        ("train.batch_size=2", 0),
        ("train.batch_size=2", 1),
        ("train.batch_size=4", 0),
        ("train.batch_size=4", 1),
    ]
    for row in result.summary:
        own = [
            json.loads((o.trial.folder(result.root) / "result.json").read_text())
            for o in result.outcomes
            if o.trial.setting == row["setting"]
        ]
        tests = [r["after"]["test"] for r in own]
        assert row["seeds"] == 2 and row["failed"] == 0
        assert row["test_mean"] == pytest.approx(sum(tests) / 2)
        assert row["test_sd"] == pytest.approx(abs(tests[0] - tests[1]) / 2**0.5)
        assert row["calls"] == pytest.approx(sum(r["calls"] for r in own) / 2)
        assert all(r["steps"] == 2 for r in own)
    assert result.summary[0]["calls"] != result.summary[1]["calls"]  # the setting took effect
    lines = (result.root / "summary.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == result.summary
    assert (
        (result.root / "summary.csv").read_text().startswith("setting,seeds,failed,metric,dev_mean")
    )
    assert {row["metric"] for row in result.summary} == {"exact"}
    assert (result.root / "summary.png").stat().st_size > 1000
    trials = [json.loads(line) for line in (result.root / "trials.jsonl").read_text().splitlines()]
    assert [t["seed"] for t in trials] == [0, 1, 0, 1]

    before = files(result.root)
    again = sweep(config, grid, [0, 1], echo=lambda line: None)
    assert again.ran == 0  # no trial started, so no model call
    assert again.summary == result.summary
    assert files(result.root) == before  # not one trial file touched


def test_a_trial_whose_worker_is_killed_resumes_without_repeating_a_step(tmp_path: Path) -> None:
    config = write_config(tmp_path, steps=6, latency=0.03)
    out = tmp_path / "sweep"
    folder = out / "config" / "seed-0"
    finished: list[SweepResult] = []
    runner = threading.Thread(
        target=lambda: finished.append(sweep(config, [], [0], out=out, echo=lambda line: None))
    )
    runner.start()
    checkpoint = folder / "checkpoint" / "checkpoint.json"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "the trial never checkpointed"
    first = json.loads((folder / "attempts.jsonl").read_text().splitlines()[0])
    os.kill(first["pid"], signal.SIGKILL)
    runner.join(timeout=240)
    assert finished, "the sweep did not finish"
    (outcome,) = finished[0].outcomes
    assert not outcome.failed, outcome.result
    attempts = [json.loads(line) for line in (folder / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 2 and attempts[1]["pid"] != first["pid"]
    steps = [json.loads(line)["step"] for line in (folder / "steps.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # each step once: the retry resumed from the checkpoint
    assert outcome.result["steps"] == 6


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--grid", "train.steps"], "expected section.key=value1,value2"),
        (["--grid", "train.steps="], "expected section.key=value1,value2"),
        (["--grid", "train.steps=1,,2"], "an empty value"),
        (["--grid", "train.steps=1,1"], "a value is given twice"),
        (["--grid", "steps=1,2"], "expected section.key=value"),
        (["--grid", "trian.steps=1,2"], r"unknown section \[trian\]"),
        (["--grid", "train.stepz=1,2"], "unknown key 'stepz'"),
        (["--grid", "train.steps=1,two"], "expected int"),
        (["--grid", "train.steps=1", "--grid", "train.steps=2"], "a key is given twice"),
        (["--seeds", "1", "1"], "a seed is given twice"),
        (["--set", "data.train=-3"], r"\[data\] train: must be >= 0"),
        (["--retries", "-1"], "--retries: expected a whole number >= 0, got -1"),
        (["--cpus-per-trial", "-0.5"], "--cpus-per-trial: expected a finite number >= 0"),
        (["--gpus-per-trial", "-1"], "--gpus-per-trial: expected a finite number >= 0"),
        (["--set", "engine.rpm=-5"], "rpm"),
        (["--grid", "engine.shared_limit=nowhere"], "unknown shared limit 'nowhere'"),
    ],
)
def test_a_bad_sweep_is_refused_before_any_trial_runs(
    tmp_path: Path, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    assert cli.main(["sweep", str(config), *arguments]) == 2
    assert re.search(message, capsys.readouterr().out)
    assert not (tmp_path / "out-sweep").exists()


def test_a_sweep_from_the_command_line_prints_progress_and_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, steps=1)
    grid = ["--grid", "network.kind=dln1,dln2", "--seeds", "3", "--set", "engine.rpm=60000"]
    code = cli.main(["sweep", str(config), *grid])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "[2/2]" in printed and "network.kind=dln1" in printed and "± 0.000" in printed
    assert "summary.csv" in printed
    root = tmp_path / "out-sweep"
    assert dg.Network.load(root / "network.kind=dln2" / "seed-3" / "network.json")
    # the trials' engines had an rpm, so they shared it through the endpoint's named actor
    calls = [json.loads(line)["calls"] for line in (root / "trials.jsonl").read_text().splitlines()]
    keeper = SharedLimit("sim:scripted").statistics()
    assert keeper["granted_requests"] - keeper["returned_requests"] >= sum(calls) > 0


def test_a_sweep_killed_with_its_driver_resumes_every_trial_where_it_stopped(
    tmp_path: Path,
) -> None:
    import ray

    config = write_config(tmp_path, steps=25, latency=0.05)
    out = tmp_path / "sweep"
    logs = [out / "config" / f"seed-{seed}" / "steps.jsonl" for seed in (0, 1)]
    command = [str(Path(sys.executable).parent / "dlgraph"), "sweep", str(config)]
    command += ["--seeds", "0", "1", "--out", str(out)]
    command += ["--address", ray.get_runtime_context().gcs_address]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(
        log.exists() and len(log.read_text().splitlines()) >= 2 for log in logs
    ):
        time.sleep(0.05)
    driver.kill()  # the driver, and with it its job's workers
    driver.wait()
    stopped = [len(log.read_text().splitlines()) for log in logs]
    assert all(2 <= count < 25 for count in stopped), stopped
    result = sweep(config, [], [0, 1], out=out, echo=lambda line: None)
    assert result.ran == 2 and not any(outcome.failed for outcome in result.outcomes)
    for log in logs:
        steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
        assert steps == list(range(1, 26))  # each step once


def test_a_cluster_address_where_nothing_answers_fails_in_seconds_naming_it(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    command = [str(Path(sys.executable).parent / "dlgraph"), "sweep", str(config)]
    command += ["--address", "127.0.0.1:1"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2
    assert "error: ray: nothing answers at 127.0.0.1:1" in finished.stdout
    assert "Traceback" not in finished.stdout + finished.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe garbage", "not JSON"),
        (b"{truncated", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"calls": 1}', "'after' must map splits to scores"),
        (b'{"after": {"dev": "high"}}', "'dev' must be dev or test with a finite score"),
        (b'{"after": {"dev": 1e999}}', "'dev' must be dev or test with a finite score"),
        (b'{"after": {"train": 0.5}}', "'train' must be dev or test"),
        (b'{"after": {"dev": 0.5}, "calls": -1, "tokens": 1, "cost": 0, "steps": 1}', "'calls'"),
        (b'{"after": {"dev": 0.5}, "calls": 1, "tokens": 1.5, "cost": 0, "steps": 1}', "'tokens'"),
        (b'{"after": {"dev": 0.5}, "calls": 1, "tokens": 1, "cost": true, "steps": 1}', "'cost'"),
        (b'{"after": {"dev": 0.5}, "calls": 1, "tokens": 1, "cost": 0}', "'steps'"),
    ],
)
def test_a_finished_trials_result_file_that_is_not_what_train_writes_is_refused_naming_it(
    tmp_path: Path, content: bytes, message: str
) -> None:
    config = write_config(tmp_path)
    result = tmp_path / "out-sweep" / "config" / "seed-0" / "result.json"
    result.parent.mkdir(parents=True)
    result.write_bytes(content)
    with pytest.raises(dg.ConfigError, match=re.escape(message)) as refused:
        sweep(config, [], [0], echo=lambda line: None)
    assert str(result) in str(refused.value) and "delete it to run this trial again" in str(
        refused.value
    )


SERVED_CONFIG = """
[backend]
name = "openai"
options = {{base_url = "{url}", model = "sim-1", profile = "sim"}}

[engine]
cache = false

[data]
source = "generated"
task = "navigation"
train = 12
dev = 6
test = 6

[network]
kind = "dln2"
hidden_max_tokens = 8

[train]
steps = 4
batch_size = 4
num_prompt_samples = 2
num_hidden_samples = 2

[output]
dir = "out"
"""


def test_a_killed_trials_row_counts_every_call_the_server_answered(tmp_path: Path) -> None:
    """The first attempt's calls (evaluations, a step, part of the next) were paid for: the
    table counts them. A call sent in the instant before the kill may never have reached
    the server, hence the upper bound (dlgraph-openai's connection limit)."""
    with ServerProcess(ServerConfig(latency_median_s=0.01, seed=1)) as server:
        config = tmp_path / "run.toml"
        config.write_text(SERVED_CONFIG.format(url=server.url))
        out = tmp_path / "sweep"
        folder = out / "config" / "seed-0"
        finished: list[SweepResult] = []
        runner = threading.Thread(
            target=lambda: finished.append(sweep(config, [], [0], out=out, echo=lambda line: None))
        )
        runner.start()
        checkpoint = folder / "checkpoint" / "checkpoint.json"
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoint.exists(), "the trial never checkpointed"
        first = json.loads((folder / "attempts.jsonl").read_text().splitlines()[0])
        os.kill(first["pid"], signal.SIGKILL)
        runner.join(timeout=240)
        answered = server.attempts()["attempts"]
    assert finished, "the sweep did not finish"
    (outcome,) = finished[0].outcomes
    assert not outcome.failed, outcome.result
    assert len((folder / "attempts.jsonl").read_text().splitlines()) == 2
    (row,) = finished[0].summary
    assert answered <= row["calls"] <= answered + 256


def test_the_sweep_table_names_each_settings_metric() -> None:
    from dlgraph_ray.sweep import Outcome, Trial, summarize, table
    from rich.console import Console

    def finished(metric: str, seed: int, test: float) -> Outcome:
        trial = Trial((f"train.metric={metric}",), seed)
        result = {"metric": metric, "after": {"test": test}, "calls": 1, "tokens": 2, "cost": 0}
        return Outcome(trial, result, True)

    summary = summarize(
        [finished("exact", 0, 0.5), finished("exact", 1, 0.7), finished("number", 0, 0.9)]
    )
    assert [(row["metric"], row["test_mean"]) for row in summary] == [
        ("exact", pytest.approx(0.6)),
        ("number", 0.9),
    ]
    console = Console(width=200, record=True)
    console.print(table(summary))
    assert re.search(r"train\.metric=number\s*│\s*number\s*│\s*1", console.export_text())
