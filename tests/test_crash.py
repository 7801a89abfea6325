"""`kill -9` at seeded moments of a training run: every resume repeats no finished step and
loses no step record, and the run reports every call it paid for."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dlgraph_sim.server import ServerConfig, ServerProcess

CONFIG = """
[backend]
name = "sim"
options = {latency_s = 0.03}

[engine]
cache = false

[data]
source = "generated"
task = "navigation"
train = 16
dev = 6
test = 6

[network]
kind = "dln2"
hidden_max_tokens = 8

[train]
steps = 20
batch_size = 4
num_prompt_samples = 2
num_hidden_samples = 2

[output]
dir = "out"
"""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def start(config: Path, *options: str) -> subprocess.Popen[str]:
    command = [str(Path(sys.executable).parent / "dlgraph"), "train", str(config), "--resume"]
    command += options
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=config.parent
    )


def test_training_killed_at_seeded_moments_resumes_with_every_step_recorded_once(tmp_path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    rng = random.Random(7)
    kills = 0
    for _ in range(40):
        process = start(config)
        time.sleep(rng.uniform(0.4, 3.0))
        if process.poll() is not None:
            process.communicate()
            break  # the run finished before this kill
        process.kill()
        process.communicate()
        kills += 1
        if kills == 12:
            break
    assert kills >= 10
    process = start(config)
    _, errors = process.communicate(timeout=300)
    assert process.returncode == 0, errors[-2000:]
    log = (tmp_path / "out" / "steps.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == list(range(1, 21))
    checkpoint = json.loads((tmp_path / "out" / "checkpoint" / "checkpoint.json").read_text())
    assert [r["step"] for r in checkpoint["payload"]["history"]] == list(range(1, 21))
    assert [json.loads(line) for line in log] == checkpoint["payload"]["history"]
    leftovers = [p.name for p in (tmp_path / "out").rglob(".*") if p.is_file()]
    assert leftovers == []


SERVED_CONFIG = """
[backend]
name = "openai"
options = {{base_url = "{url}", model = "sim-1", profile = "sim"}}

[engine]
cache = false

[data]
source = "generated"
task = "navigation"
train = 16
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
CONCURRENCY_CEILING = 256
"""dlgraph-openai's connection limit: no more calls than this can be in flight at a kill."""


def test_a_run_killed_at_random_reports_every_call_the_server_answered(tmp_path) -> None:
    """Without coalescing, a call is one HTTP request, which the simulated server counts
    whether or not the process that sent it lived to read the answer. A call sent in the
    instant before a kill may be counted and never reach the server, hence the upper bound;
    no call the server answered may be missing."""
    with ServerProcess(ServerConfig(latency_median_s=0.01, seed=1)) as server:
        config = tmp_path / "run.toml"
        config.write_text(SERVED_CONFIG.format(url=server.url))
        rng = random.Random(3)
        kills = 0
        while kills < 4:  # each kill after a seeded number of answers, however fast the machine
            process = start(config, "--no-probe")
            target = server.attempts()["attempts"] + rng.randint(30, 150)
            while server.attempts()["attempts"] < target and process.poll() is None:
                time.sleep(0.02)
            if process.poll() is not None:
                process.communicate()
                break  # the run finished before this kill
            process.kill()
            process.communicate()
            kills += 1
        _, errors = start(config, "--no-probe").communicate(timeout=300)
        answered = server.attempts()
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert kills == 4, errors[-2000:]
    assert answered["by_outcome"] == {"ok": answered["attempts"]}
    assert answered["attempts"] <= result["calls"]
    assert result["calls"] <= answered["attempts"] + kills * CONCURRENCY_CEILING
    assert result["by_model"]["forward"]["http_requests"] == result["calls"]
