"""Bad sweeps, pools and shared limits are refused before Ray starts: before a trial runs (or
is paid for), naming the option, the value, and for a config the file and section."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from dlgraph_ray import SharedLimit
from dlgraph_ray.replicas import check_pool
from dlgraph_ray.sweep import parse_axis, sweep

import dlgraph as dg
from dlgraph import cli

CONFIG = """
[backend]
name = "sim"

[engine]
cache = false

[data]
source = "generated"
task = "navigation"
train = 4
dev = 2
test = 2

[train]
steps = 1
batch_size = 2

[output]
dir = "out"
"""


@pytest.fixture(autouse=True)
def no_ray_is_started() -> Iterator[None]:
    assert not ray.is_initialized()
    yield
    started = ray.is_initialized()
    if started:
        ray.shutdown()
    assert not started, "Ray was started for input that could be refused before"


def refused(tmp_path: Path, arguments: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    assert cli.main(["sweep", str(config), *arguments]) == 2
    assert not (tmp_path / "out-sweep").exists()
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments",
    [
        ["--grid", "train.seed=1,2"],
        ["--grid", "train.steps=1,2", "--grid", "train.seed=3,4"],
        ["--set", "train.seed=5"],
        ["--set", " train.seed = 5"],
    ],
)
def test_a_sweep_refuses_train_seed_in_grid_or_set_pointing_at_seeds(
    tmp_path: Path, arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # each trial's --seeds value is applied last: the grid's seeds would all run as seed 0
    printed = refused(tmp_path, arguments, capsys)
    option = "--set" if "--set" in arguments else "--grid"
    assert re.search(
        rf"error: {option} '.*train\.seed.*': a sweep sets train\.seed from --seeds", printed
    )
    assert "--seeds 1 2" in printed


@pytest.mark.parametrize(
    ("values", "first", "second"),
    [
        ("train.steps=1,+1", "1", "+1"),
        ("train.steps=1,0x1", "1", "0x1"),
        ("train.steps=2,1,2", "2", "2"),
        ('network.kind=dln1,"dln1"', "dln1", '"dln1"'),
        ("train.num_prompt_samples=1_0,10", "1_0", "10"),
    ],
)
def test_a_sweep_refuses_a_grid_value_given_twice_however_it_is_written(
    tmp_path: Path,
    values: str,
    first: str,
    second: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    printed = refused(tmp_path, ["--grid", values], capsys)
    assert "a value is given twice" in printed
    assert f"({first!r} and {second!r})" in printed


def test_grid_values_that_the_config_reads_differently_are_not_taken_for_duplicates() -> None:
    assert len(parse_axis("train.x=1,true")) == 2  # true is no 1 to a config
    assert len(parse_axis("train.x=[1],[true]")) == 2
    assert len(parse_axis("network.kind=dln1,dln2")) == 2


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--cpus-per-trial", "nan"], "--cpus-per-trial: expected a finite number >= 0, got nan"),
        (["--cpus-per-trial", "inf"], "--cpus-per-trial: expected a finite number >= 0, got inf"),
        (["--gpus-per-trial", "inf"], "--gpus-per-trial: expected a finite number >= 0, got inf"),
        (["--gpus-per-trial=-inf"], "--gpus-per-trial: expected a finite number >= 0, got -inf"),
    ],
)
def test_a_sweep_refuses_resources_per_trial_that_are_not_finite(
    tmp_path: Path, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in refused(tmp_path, arguments, capsys)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("{latency_s = -1}", "[backend] latency_s must be >= 0, got -1"),
        ('{generate = {"(" = "x"}}', "[backend] generate: '(' is not a valid pattern"),
        ("{name = 5}", "[backend] name: expected text, got 5"),
        ("{capabilities = {}}", "[backend] capabilities: expected a dlgraph.Capabilities"),
        ("{temperature = 1}", "[backend] ScriptedModel.__init__() got an unexpected keyword"),
    ],
)
def test_a_sweep_refuses_bad_backend_options_before_any_trial(
    tmp_path: Path, options: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    printed = refused(tmp_path, ["--set", f"backend.options={options}"], capsys)
    assert f"error: trial (config) seed 0: {tmp_path / 'run.toml'}: {message}" in printed


@pytest.mark.parametrize(
    ("backend", "options", "message"),
    [
        ("llamacpp", "{parallel = 0}", "[backend] parallel must be a positive integer, got 0"),
        ("llamacpp", "{n_ctx = -3}", "[backend] n_ctx must be a positive integer, got -3"),
        (
            "ray",
            '{backend = "llamacpp", parallel = 0}',
            "[backend] llamacpp: parallel must be a positive integer, got 0",
        ),
        ("ray", '{backend = "sim", replicas = 0}', "[backend] replicas: expected an integer >= 1"),
        ("ray", '{backend = "sim", address = 5}', "[backend] address: expected a Ray address"),
        ("ray", "{replicas = 2}", "[backend] check_pool() missing 1 required"),
    ],
)
def test_a_sweep_refuses_bad_options_of_a_model_or_a_pool_without_loading_or_starting_either(
    tmp_path: Path,
    backend: str,
    options: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = ["--set", f'backend.name="{backend}"', "--set", f"backend.options={options}"]
    assert message in refused(tmp_path, settings, capsys)


def test_a_sweep_refuses_a_bad_backward_backend_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = ["--set", 'backward.name="sim"', "--set", "backward.options={latency_s=nan}"]
    assert "[backward] latency_s: expected a number, got NaN" in refused(tmp_path, settings, capsys)


@pytest.mark.parametrize("address", [5, b"127.0.0.1:6379", ""])
def test_a_sweep_refuses_an_address_that_is_not_text(tmp_path: Path, address: object) -> None:
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    with pytest.raises(dg.ConfigError, match="--address: expected a Ray address"):
        sweep(config, address=address, echo=lambda line: None)  # type: ignore[arg-type]


@pytest.mark.parametrize("address", [5, 6.0, ["HOST:6379"]])
def test_a_pool_refuses_an_address_that_is_not_text_naming_it(address: object) -> None:
    with pytest.raises(TypeError, match=r"address: expected a Ray address as text .* got "):
        dg.connect("ray", backend="sim", address=address)


def test_a_shared_limit_refuses_an_address_that_is_not_text_naming_it() -> None:
    with pytest.raises(TypeError, match=r"address: expected a Ray address as text .* got 5"):
        SharedLimit("k", address=5)  # type: ignore[arg-type]


def test_a_pool_refuses_its_hosted_backends_bad_options_before_starting_a_replica() -> None:
    with pytest.raises(ValueError, match="llamacpp: parallel must be a positive integer, got 0"):
        dg.connect("ray", backend="llamacpp", parallel=0)


def test_a_pool_check_passes_good_options_without_starting_ray() -> None:
    check_pool("sim", replicas=2, num_cpus=0.5, latency_s=0.01)
    check_pool("llamacpp", replicas=1, parallel=2)  # built, not entered: no model loaded
