"""The public surface: exports, plugin discovery, and what `import dlgraph` loads."""

from __future__ import annotations

import subprocess
import sys

import pytest
from dlgraph_sim import ScriptedModel

import dlgraph as dg


def test_all_lists_exactly_the_importable_public_names() -> None:
    public = {name for name in vars(dg) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(dg, name)).__name__ == "module"}
    assert set(dg.__all__) == public - modules
    for name in dg.__all__:
        assert getattr(dg, name) is not None


def test_import_dlgraph_loads_no_provider_library() -> None:
    libraries = "('aiohttp', 'llama_cpp', 'openai', 'ray', 'opentelemetry')"
    code = f"import sys, dlgraph; print(sorted(m for m in {libraries} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_command_line_finds_plugin_commands_without_importing_ray() -> None:
    code = "import sys; from dlgraph import cli; cli._parser(); print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_connect_finds_the_sim_plugin_through_its_entry_point() -> None:
    backend = dg.connect("sim", generate={"hi": "hello"})
    assert isinstance(backend, ScriptedModel)


def test_connect_unknown_name_lists_installed_backends() -> None:
    with pytest.raises(dg.UnknownBackend, match=r"unknown backend 'nope' \(known: .*sim"):
        dg.connect("nope")


def test_registry_accepts_in_process_backends() -> None:
    registry = dg.BackendRegistry()
    registry.register("mine", lambda **options: ScriptedModel(name=options["name"]))
    assert registry.connect("mine", name="x").identity == "sim:x"
    assert registry.names() == ["mine"]


def test_a_check_builds_the_backend_or_asks_the_factory_s_own_check_and_starts_nothing() -> None:
    """A factory whose building starts something (a cluster) says so with a ``check``."""
    built, checked = [], []

    def starts_a_cluster(**options: object) -> dg.Backend:
        built.append(options)
        return ScriptedModel()

    def check(**options: object) -> None:
        if options.get("replicas", 1) < 1:  # type: ignore[operator]
            raise ValueError("replicas must be >= 1")
        checked.append(options)

    starts_a_cluster.check = check  # type: ignore[attr-defined]
    registry = dg.BackendRegistry()
    registry.register("cluster", starts_a_cluster)
    registry.register("plain", lambda **options: ScriptedModel(**options))  # type: ignore[arg-type]
    registry.check("cluster", replicas=2)
    with pytest.raises(ValueError, match="replicas must be >= 1"):
        registry.check("cluster", replicas=0)
    with pytest.raises(TypeError, match="latency_s"):
        registry.check("plain", latency_s="slow")
    assert checked == [{"replicas": 2}] and built == []


def test_a_config_check_refuses_bad_backend_options_naming_file_and_section(tmp_path) -> None:
    from dlgraph.config import RunConfig

    config = tmp_path / "run.toml"
    config.write_text(
        '[backend]\nname = "sim"\noptions = { latency_s = -1 }\n'
        '[data]\ntask = "tweets"\n[network]\nkind = "dln1"\n'
    )
    with pytest.raises(dg.ConfigError, match=r"run.toml: \[backend\] latency_s must be >= 0"):
        RunConfig.read(config).check()


def test_requests_validate_their_fields() -> None:
    with pytest.raises(ValueError, match="max_tokens must be > 0"):
        dg.GenerateRequest("x", max_tokens=0)
    with pytest.raises(ValueError, match="phase='training'"):
        dg.LogprobRequest("x", "y", phase="training")


async def test_engine_closes_the_backend_on_exit() -> None:
    model = ScriptedModel()
    async with dg.Engine(model):
        pass
    assert model.closed


async def test_engine_generate_and_logprob_reach_the_backend_with_their_fields() -> None:
    model = ScriptedModel(generate=lambda r: f"{r.max_tokens}/{r.seed}", logprob=lambda r: -1.5)
    async with dg.Engine(model) as engine:
        assert await engine.generate("Say hi.", max_tokens=8, seed=3) == "8/3"
        assert await engine.logprob("The sky is", " blue") == -1.5
    assert engine.statistics().total.calls == 2


async def test_error_inside_engine_block_propagates_as_itself() -> None:
    with pytest.raises(dg.DataError, match="boom"):
        async with dg.Engine(ScriptedModel()):
            raise dg.DataError("boom")


def test_the_plugin_surface_exports_every_name_it_lists() -> None:
    from dlgraph import plugin

    assert len(set(plugin.__all__)) == len(plugin.__all__)
    missing = [name for name in plugin.__all__ if getattr(plugin, name, None) is None]
    assert missing == []


def test_plugins_use_only_names_the_plugin_surface_lists() -> None:
    """A plugin reaching for a name the surface merely happens to import (``plugin.attrs``,
    ``from dlgraph.plugin import Path``) would depend on something nobody promised."""
    import ast
    from pathlib import Path

    from dlgraph import plugin

    used: set[str] = set()
    for path in (Path(__file__).parents[1] / "backends").glob("*/dlgraph_*/**/*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "dlgraph.plugin":
                used.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "plugin":
                    used.add(node.attr)
    assert used and used <= set(plugin.__all__), used - set(plugin.__all__)
