"""dlgraph-sim's options are checked on construction, naming the field: the simulated
server's `ServerConfig` (in code and on its command line) and the scripted model's options
(in code and in a config's ``[backend] name = "sim"``), so that a test or a benchmark never
runs against a double that quietly ignores a bad setting."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dlgraph_sim import ScriptedModel
from dlgraph_sim.server import ServerConfig

import dlgraph as dg
from dlgraph import cli
from dlgraph.config import RunConfig


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"rpm": -1}, ValueError, "rpm must be > 0, got -1"),
        ({"rpm": 0}, ValueError, "rpm must be > 0, got 0"),
        ({"rpm": math.nan}, ValueError, "rpm: expected a number, got NaN"),
        ({"tpm": math.inf}, ValueError, "tpm: expected a finite number, got inf"),
        ({"burst_s": 0}, ValueError, "burst_s must be > 0, got 0"),
        ({"error_rate": 2.0}, ValueError, "error_rate must be <= 1 (a share of attempts), got 2.0"),
        ({"drop_rate": -1}, ValueError, "drop_rate must be >= 0, got -1"),
        ({"hang_rate": math.nan}, ValueError, "hang_rate: expected a number, got NaN"),
        ({"malformed_rate": "0.1"}, TypeError, "malformed_rate: expected float, got '0.1'"),
        ({"latency_median_s": -0.5}, ValueError, "latency_median_s must be >= 0, got -0.5"),
        ({"latency_sigma": math.inf}, ValueError, "latency_sigma: expected a finite number"),
        (
            {"retry_after": "bogus"},
            ValueError,
            "retry_after: expected one of ms, seconds, date, none, got 'bogus'",
        ),
        ({"max_batch": 0}, ValueError, "max_batch must be > 0, got 0"),
        ({"max_batch": 4.0}, TypeError, "max_batch: expected int, got 4.0"),
        ({"context_window": -5}, ValueError, "context_window must be > 0, got -5"),
        ({"model": ""}, ValueError, "model: expected a non-empty name"),
        ({"model": 3}, TypeError, "model: expected text, got int"),
        ({"api_key": b"sk-live-5ecret"}, TypeError, "api_key: expected text, got bytes"),
        ({"poison": b"X"}, TypeError, "poison: expected text, got bytes"),
        ({"seed": True}, TypeError, "seed: expected int, got True"),
        ({"seed": 1.5}, TypeError, "seed: expected int, got 1.5"),
    ],
)
def test_server_config_refuses_a_bad_setting_naming_the_field(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        ServerConfig(**options)  # type: ignore[arg-type]


def test_server_config_takes_every_documented_setting() -> None:
    config = ServerConfig(
        rpm=600, tpm=None, retry_after="none", error_rate=1, drop_rate=0.0, context_window=None
    )
    assert config.retry_after == "none" and config.error_rate == 1
    for mode in ("ms", "seconds", "date"):
        assert ServerConfig(retry_after=mode).retry_after == mode


def test_server_config_never_shows_its_api_key() -> None:
    assert "sk-secret" not in repr(ServerConfig(api_key="sk-secret"))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--rpm", "nan"], "--rpm: rpm: expected a number, got NaN"),
        (["--error-rate", "2"], "--error-rate: error_rate must be <= 1"),
        (["--retry-after", "bogus"], "--retry-after: retry_after: expected one of"),
        (["--max-batch", "0"], "--max-batch: max_batch must be > 0, got 0"),
    ],
)
def test_the_server_command_refuses_a_bad_option_naming_it_before_serving(
    arguments: list[str], message: str
) -> None:
    command = [sys.executable, "-m", "dlgraph_sim.server", "--port", "0", *arguments]
    # without the check, the server would start serving and never exit
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2, finished.stdout
    assert message in finished.stderr
    assert "serving" not in finished.stdout and "Traceback" not in finished.stderr


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"latency_s": "x"},
            TypeError,
            "latency_s: expected seconds (a number >= 0) or a function",
        ),
        ({"latency_s": -1}, ValueError, "latency_s must be >= 0, got -1"),
        ({"latency_s": math.nan}, ValueError, "latency_s: expected a number, got NaN"),
        ({"latency_s": math.inf}, ValueError, "latency_s: expected a finite number, got inf"),
        ({"latency_s": True}, TypeError, "latency_s: expected seconds"),
        ({"name": 5}, TypeError, "name: expected text, got 5"),
        ({"name": ""}, ValueError, "name: expected a non-empty text"),
        ({"generate": "x"}, TypeError, "generate: expected a function of the request or a table"),
        ({"generate": {"(": "x"}}, ValueError, "generate: '(' is not a valid pattern"),
        ({"generate": {"a": 5}}, TypeError, "generate: expected a table of {pattern: text}"),
        ({"logprob": 5}, TypeError, "logprob: expected a function of the request, got 5"),
        ({"fault": 1}, TypeError, "fault: expected None or a function of (request, call number)"),
        ({"capabilities": {}}, TypeError, "capabilities: expected a dlgraph.Capabilities, got {}"),
    ],
)
def test_scripted_model_refuses_a_bad_option_naming_it(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        ScriptedModel(**options)  # type: ignore[arg-type]
    with pytest.raises(error, match=re.escape(message)):
        dg.connect("sim", **options)


def test_scripted_model_takes_functions_tables_and_finite_latencies() -> None:
    model = ScriptedModel(
        generate={r"^\d+$": "number"},
        logprob=lambda request: -1.0,
        fault=lambda request, number: None,
        latency_s=lambda request: 0.0,
        name="m",
        capabilities=dg.Capabilities(max_batch=2),
    )
    assert model.identity == "sim:m"
    assert ScriptedModel(latency_s=0).latency_s == 0


CONFIG = """
[backend]
name = "sim"
options = {options}

[data]
source = "generated"
task = "navigation"
train = 4
dev = 2
test = 2

[train]
steps = 1
batch_size = 2
"""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('{latency_s = "x"}', "latency_s: expected seconds"),
        ("{latency_s = -1}", "latency_s must be >= 0, got -1"),
        ("{latency_s = nan}", "latency_s: expected a number, got NaN"),
        ("{name = 5}", "name: expected text, got 5"),
        ('{name = ""}', "name: expected a non-empty text"),
        ('{generate = "x"}', "generate: expected a function of the request or a table"),
        ('{generate = {"(" = "x"}}', "generate: '(' is not a valid pattern"),
        ("{logprob = 5}", "logprob: expected a function of the request, got 5"),
        ("{fault = 1}", "fault: expected None or a function"),
        ("{capabilities = {}}", "capabilities: expected a dlgraph.Capabilities, got {}"),
    ],
)
def test_a_configs_sim_backend_options_are_refused_naming_section_and_field(
    tmp_path: Path, options: str, message: str
) -> None:
    path = tmp_path / "run.toml"
    path.write_text(CONFIG.format(options=options))
    with pytest.raises(dg.ConfigError, match=re.escape(f"{path}: [backend] {message}")):
        RunConfig.read(path).engine()


def test_dlgraph_train_refuses_a_bad_sim_pattern_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.toml"
    path.write_text(CONFIG.format(options='{generate = {"[a-" = "x"}}'))
    assert cli.main(["train", str(path)]) == 2
    printed = capsys.readouterr().out
    assert "[backend] generate: '[a-' is not a valid pattern" in printed
    assert "Traceback" not in printed
