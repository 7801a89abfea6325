"""`kill -9` at seeded moments of a training run: every resume repeats no finished step and
loses no step record."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

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

pytestmark = pytest.mark.timeout(600)


def start(config: Path) -> subprocess.Popen[str]:
    command = [str(Path(sys.executable).parent / "dlgraph"), "train", str(config), "--resume"]
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
