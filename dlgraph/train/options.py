"""The trainer's options, one frozen record; defaults follow the DLN paper where it has one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import attrs

from dlgraph._validate import MAX_TOKENS, boolean, integer, number, strings

MAX_COUNT = 1_000
"""The most samples, remembered parameters or demonstrations an option may ask for: each
is a model call (or many) per node and step, so more is a typo, not a setting."""


def _optional_names(names: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if names is None else strings(names, "trainable")


def _below_one(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value >= 1:
        raise ValueError(
            f"{attribute.name}: must be below 1 (certainty needs every call), got {value}"
        )


@attrs.frozen(kw_only=True)
class TrainerOptions:
    num_prompt_samples: int = attrs.field(default=10, validator=integer(1, MAX_COUNT))
    """New prompt candidates proposed per trainable node and step."""
    num_hidden_samples: int = attrs.field(default=5, validator=integer(0, MAX_COUNT))
    """Posterior samples per hidden node and example (the forward output is one more)."""
    posterior_temperature: float = attrs.field(default=1.0, validator=number(0, above=True))
    """τ in w_k ∝ exp(score_k / τ): higher flattens the posterior weights."""
    use_posterior: bool = attrs.field(default=True, validator=boolean)
    """False: hidden targets are the forward outputs (no inference of hidden states)."""
    posterior_likelihood: bool = attrs.field(default=True, validator=boolean)
    """Weigh a hidden candidate by how well its children then reach their targets."""
    posterior_prior: bool = attrs.field(default=True, validator=boolean)
    """Weigh a hidden candidate by its own probability under the node's prompt."""
    sample_temperature: float = attrs.field(default=0.7, validator=number(0))
    """Temperature of posterior and proposal samples."""
    trainable: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_names)
    """Nodes to train (None: every node marked trainable)."""
    trust_region: float = attrs.field(default=0.0, validator=number(0))
    """Penalty on output nodes for losing log-likelihood on examples, relative to the current prompt."""
    memory_size: int = attrs.field(default=5, validator=integer(0, MAX_COUNT))
    """Best parameters (instruction and demonstrations) remembered per node and scored again."""
    max_demonstrations: int = attrs.field(default=4, validator=integer(0, MAX_COUNT))
    """Demonstrations a candidate may carry (0: instructions only)."""
    num_demonstration_samples: int = attrs.field(default=4, validator=integer(0, MAX_COUNT))
    """Demonstration sets drawn from the batch per trainable node and step."""
    proposal_half_batch: bool = attrs.field(default=True, validator=boolean)
    """Proposals see a shuffled half of the batch rather than all of it."""
    proposal_max_tokens: int = attrs.field(default=200, validator=integer(1, MAX_TOKENS))
    min_weight: float = attrs.field(default=0.01, validator=number(0))
    """Posterior candidates lighter than this are left out of ELBO expectations."""
    scoring: Literal["auto", "logprob", "accuracy"] = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "logprob", "accuracy"))
    )
    """How a candidate prompt is scored: exact log-likelihood, or sampled accuracy."""
    stop_when_decided: bool = attrs.field(default=True, validator=boolean)
    """Stop scoring what is already decided: candidates are raced over the batch's examples
    against the current parameter (always scored in full), and each step's dev evaluation
    is a paired comparison with the best network that stops once it cannot win or is a
    loser at `decision_confidence`. False: every candidate on every example and the whole
    dev set after every step (full scoring: about three times the calls)."""
    decision_confidence: float = attrs.field(
        default=0.95, validator=[number(0.5, above=True), _below_one]
    )
    """One-sided confidence with which a race drops a candidate and a dev comparison
    declares a loser (ignored under full scoring)."""
    seed: int = attrs.field(default=0, validator=integer())

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["trainable"] = list(self.trainable) if self.trainable is not None else None
        return data
