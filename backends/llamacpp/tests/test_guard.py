"""No CPU can kill the process: llama.cpp's extra buffer types (AMX, repacked weights) are tried
in a child process once per machine, and kept only if it survives.

The tests make this machine behave like one whose CPU faults (the `SIMULATE_CRASH` seam: a
process that loads the model with extra buffer types dies by SIGILL, as on Intel Xeons with
AMX), each with a verdict cache of its own.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from dlgraph_llamacpp import LlamaCppModel, default_model_path
from dlgraph_llamacpp.guard import CACHE_DIR, machine_key, read_verdict, verdict_file
from dlgraph_llamacpp.native import SIMULATE_CRASH

import dlgraph as dg

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_DIR, str(tmp_path / "cache"))
    return tmp_path / "cache"


def no_child_can_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """From here on, starting the check's child process fails loudly."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("dlgraph_llamacpp") and r.levelno >= logging.WARNING
    ]


async def score(model: LlamaCppModel) -> float:
    return await model.logprob(dg.LogprobRequest("The capital of France is", " Paris"))


async def test_a_cpu_that_crashes_with_extra_buffers_gets_them_off_said_once_and_cached(
    fresh_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv(SIMULATE_CRASH, "extra_buffers")
    caplog.set_level(logging.INFO)
    async with LlamaCppModel(n_ctx=256) as model:
        assert model.verdict is not None
        assert (model.verdict.enabled, model.verdict.source) == (False, "probe")
        assert await score(model) < 0  # this process lives, and the model answers
    (warning,) = warnings_of(caplog)
    assert "stay off" in warning and "SIGILL" in warning
    caplog.clear()
    no_child_can_start(monkeypatch, tmp_path)
    async with LlamaCppModel(n_ctx=256, batching=False) as model:
        assert model.verdict is not None
        assert (model.verdict.enabled, model.verdict.source) == (False, "cache")
        assert await score(model) < 0
    assert warnings_of(caplog) == []


def skip_where_they_crash(allowed: bool) -> None:
    if not allowed:
        pytest.skip("llama.cpp's extra buffer types crash on this CPU (this machine's verdict)")


async def test_a_cpu_where_extra_buffers_work_keeps_them_on(
    fresh_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    extra_buffers_allowed: bool,
) -> None:
    skip_where_they_crash(extra_buffers_allowed)
    monkeypatch.delenv(SIMULATE_CRASH, raising=False)
    async with LlamaCppModel(n_ctx=256) as model:
        assert model.verdict is not None
        assert (model.verdict.enabled, model.verdict.source) == (True, "probe")
    assert warnings_of(caplog) == []
    stored = json.loads(verdict_file(machine_key(default_model_path())).read_text())
    assert stored["enabled"] is True


async def test_a_cpu_that_crashes_even_without_extra_buffers_is_a_clear_error_not_a_crash(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SIMULATE_CRASH, "always")
    with pytest.raises(dg.BackendUnavailable) as caught:
        async with LlamaCppModel(n_ctx=256):
            pass
    message = str(caught.value)
    assert "cannot run on this CPU" in message and "even with extra buffer types off" in message
    assert "SIGILL" in message and "llama-cpp-python 0.3" in message
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in message  # how to rebuild it
    assert not verdict_file(machine_key(default_model_path())).exists()


@pytest.mark.parametrize("setting", [False, True])
async def test_an_explicit_setting_decides_without_a_child(
    setting: bool,
    fresh_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    extra_buffers_allowed: bool,
) -> None:
    skip_where_they_crash(extra_buffers_allowed or not setting)
    no_child_can_start(monkeypatch, tmp_path)
    async with LlamaCppModel(n_ctx=256, extra_buffers=setting) as model:
        assert model.verdict is not None
        assert (model.verdict.enabled, model.verdict.source) == (setting, "option")
        assert await score(model) < 0


def test_extra_buffers_takes_auto_true_or_false_only() -> None:
    for wrong in ("yes", "on", 1, None):
        with pytest.raises(TypeError, match=r'extra_buffers: expected "auto", true or false'):
            LlamaCppModel(extra_buffers=wrong)  # type: ignore[arg-type]


def test_a_config_with_a_wrong_extra_buffers_value_names_file_and_section(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        '[backend]\nname = "llamacpp"\noptions = { extra_buffers = "sometimes" }\n'
        '[data]\ntask = "tweets"\n[network]\nkind = "dln1"\n'
    )
    from dlgraph.config import RunConfig

    with pytest.raises(dg.ConfigError, match=r"run.toml: \[backend\] extra_buffers: expected"):
        RunConfig.read(config).forward.build()


BAD_VERDICT_FILES = {
    "not json": "{",
    "a list": "[]",
    "fields missing": '{"format": "dlgraph.llamacpp.extra_buffers/1"}',
    "enabled not a bool": None,  # filled in below: the right key, "enabled": "yes"
    "another CPU's key": None,
    "not text": b"\xff\xfe\x00",
    "too big": " " * 20_000 + "{}",
}


@pytest.mark.parametrize("case", sorted(BAD_VERDICT_FILES))
def test_a_verdict_file_that_is_not_a_verdict_for_this_machine_is_ignored(
    case: str, fresh_cache: Path
) -> None:
    key = machine_key(default_model_path())
    path = verdict_file(key)
    path.parent.mkdir(parents=True)
    good = {"format": "dlgraph.llamacpp.extra_buffers/1", "key": key, "reason": "tried"}
    content = BAD_VERDICT_FILES[case]
    if case == "enabled not a bool":
        content = json.dumps(good | {"enabled": "yes"})
    elif case == "another CPU's key":
        content = json.dumps(good | {"key": key | {"cpu": "Other CPU"}, "enabled": True})
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(str(content))
    assert read_verdict(path, key) is None
    path.write_text(json.dumps(good | {"enabled": False}))
    assert read_verdict(path, key) == read_verdict(path, key) is not None  # the good one reads


async def test_a_corrupt_verdict_file_is_replaced_by_a_new_check(fresh_cache: Path) -> None:
    path = verdict_file(machine_key(default_model_path()))
    path.parent.mkdir(parents=True)
    path.write_text("{ truncated")
    async with LlamaCppModel(n_ctx=256) as model:
        assert model.verdict is not None and model.verdict.source == "probe"
    assert read_verdict(path, machine_key(default_model_path())) is not None
