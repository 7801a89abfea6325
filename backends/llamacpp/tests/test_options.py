"""The embedded backend's options that need no model loaded: what its capabilities state."""

from __future__ import annotations

import pytest
from dlgraph_llamacpp.model import LlamaCppModel

import dlgraph as dg


def test_a_class_distribution_is_one_call_unless_max_continuations_is_zero() -> None:
    """`max_continuations=0` restores one log-probability call per verbalizer (the scoring of
    runs before one-call classes, for comparing with them); the engine's classify and the
    estimate both read it from the capabilities."""
    assert LlamaCppModel().capabilities.continuations == dg.plugin.MAX_CONTINUATIONS
    assert LlamaCppModel().capabilities.distribution_calls(6) == 1
    per_verbalizer = dg.connect("llamacpp", max_continuations=0).capabilities
    assert per_verbalizer.continuations == 0 and per_verbalizer.distribution_calls(6) == 6
    assert LlamaCppModel(max_continuations=4).capabilities.distribution_calls(6) == 2  # 4 + 2


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1, "must be >= 0"), (257, "must be <= 256"), (True, "expected int"), (None, "expected int")],
)
def test_a_max_continuations_that_is_no_count_is_refused(value: object, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=f"max_continuations.*{message}"):
        LlamaCppModel(max_continuations=value)  # type: ignore[arg-type]


def test_samples_of_one_prompt_are_one_call_unless_max_samples_is_zero() -> None:
    assert LlamaCppModel().capabilities.samples == dg.plugin.MAX_SAMPLES
    assert LlamaCppModel().capabilities.sample_calls(5) == 1
    each = dg.connect("llamacpp", max_samples=0).capabilities
    assert each.samples == 0 and each.sample_calls(5) == 5
    assert LlamaCppModel(max_samples=2).capabilities.sample_calls(5) == 3  # 2 + 2 + 1


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1, "must be >= 0"), (129, "must be <= 128"), (True, "expected int"), ("4", "expected int")],
)
def test_a_max_samples_that_is_no_count_is_refused(value: object, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=f"max_samples.*{message}"):
        LlamaCppModel(max_samples=value)  # type: ignore[arg-type]


def test_a_config_with_a_wrong_max_samples_names_file_and_section(tmp_path) -> None:
    from dlgraph.config import RunConfig

    config = tmp_path / "run.toml"
    config.write_text(
        '[backend]\nname = "llamacpp"\noptions = { max_samples = 1.5 }\n'
        '[data]\ntask = "tweets"\n[network]\nkind = "dln1"\n'
    )
    with pytest.raises(dg.ConfigError, match=r"run.toml: \[backend\] max_samples: expected int"):
        RunConfig.read(config).forward.build()


@pytest.mark.parametrize("value", ["", "  ", "model\0.gguf", 5])
def test_a_model_path_that_is_empty_or_no_path_is_refused_not_read_as_the_default(
    value: object,
) -> None:
    with pytest.raises((TypeError, ValueError), match="model_path"):
        LlamaCppModel(model_path=value)  # type: ignore[arg-type]
