"""Checkpoints: the whole training state after a step, written atomically, checked on load.

A checkpoint is untrusted on load: after the checksum, every field is parsed and checked as
strictly as the code that wrote it (networks through `Network.from_json`, step records field
by field, the random state by restoring it into a scratch generator), and the step numbers
must run 1..step. Only a checkpoint that passes all of it is returned; nothing is half-loaded.

Version 2 (written before runs kept the best network's per-example dev results) is read as it
was written, field by field as strictly, without `best_results`: the run resuming it scores
the best network on dev once to rebuild them, and its next save writes version 3.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from dlgraph._files import write_atomic
from dlgraph._untrusted import UnreadableFile, excerpt, parse_json, read_text
from dlgraph._validate import check_int, check_number, check_text
from dlgraph.errors import CheckpointError, GraphError
from dlgraph.network import Network
from dlgraph.train.candidates import Memory
from dlgraph.train.options import TrainerOptions
from dlgraph.train.records import StepRecord

FORMAT = "dlgraph.checkpoint"
VERSION = 3
WITHOUT_RESULTS = 2
"""The version before `best_results`, still read (and rewritten as `VERSION` by the next save)."""
OPTIONS_SINCE_VERSION_3 = ("stop_when_decided", "decision_confidence")
"""Trainer options that came with version 3, so a version-2 checkpoint's fingerprint left them
out: they decide how later steps score, not what a checkpoint holds, so any value resumes it."""
FILENAME = "checkpoint.json"
BEST_FILENAME = "best.json"
"""The best network so far, beside the checkpoint."""
MEMORY_SIZE = 1 << 30
"""The memory read back keeps every entry written; the trainer's options bound what it adds."""
T = TypeVar("T")


def _digest(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@attrs.frozen(kw_only=True)
class Checkpoint:
    """Training state after `step` finished steps; `fingerprint` ties it to one run setup."""

    step: int
    fingerprint: str
    network: Network
    best_network: Network
    best_score: float | None
    initial_score: float | None
    evaluations_since_best: int
    best_results: list[float] | None
    """The best network's metric score on each dev example, any finite number (their mean is
    `best_score`; what a step's comparison is against); None read from a version-2
    checkpoint, which did not keep them."""
    memory: Memory
    rng_state: tuple[Any, ...]
    history: list[StepRecord]
    """Every finished step's record, in order: the source of truth for the step log."""
    ledger: list[dict[str, Any]]
    version: int = attrs.field(default=VERSION, kw_only=True)
    """The format version it was read from (a written checkpoint is always `VERSION`)."""

    def to_json(self) -> dict[str, Any]:
        if self.best_results is None:
            raise ValueError("a checkpoint is written with the best network's dev results")
        version, internal, gauss = self.rng_state
        return {
            "step": self.step,
            "fingerprint": self.fingerprint,
            "network": self.network.to_json(),
            "best_network": self.best_network.to_json(),
            "best_score": self.best_score,
            "initial_score": self.initial_score,
            "evaluations_since_best": self.evaluations_since_best,
            "best_results": self.best_results,
            "memory": self.memory.to_json(),
            "rng_state": [version, list(internal), gauss],
            "history": [record.to_json() for record in self.history],
            "ledger": self.ledger,
        }

    def write(self, directory: str | os.PathLike[str]) -> Path:
        payload = self.to_json()
        document = {"format": FORMAT, "version": VERSION, "sha256": _digest(payload)}
        path = Path(directory) / FILENAME
        write_atomic(path, json.dumps(document | {"payload": payload}) + "\n")
        return path

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> Checkpoint | None:
        """The checkpoint in `directory`, None if there is none; CheckpointError, naming the
        file and the field, for one that is damaged in any way."""
        path = Path(directory) / FILENAME
        if not path.exists():
            return None
        try:
            document = parse_json(read_text(path, "checkpoint file"))
        except UnreadableFile as error:
            raise CheckpointError(f"{path}: {error}") from None
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({error})") from error
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a dlgraph checkpoint")
        version = document.get("version")
        if version not in (VERSION, WITHOUT_RESULTS):
            raise CheckpointError(
                f"{path}: checkpoint version {excerpt(version)}, expected {VERSION} "
                f"(or {WITHOUT_RESULTS}, which is upgraded)"
            )
        payload = document.get("payload")
        if not isinstance(payload, dict) or document.get("sha256") != _digest(payload):
            raise CheckpointError(f"{path}: checksum mismatch, the checkpoint is corrupt")
        return cls.from_json(payload, path, VERSION if version == VERSION else WITHOUT_RESULTS)

    @classmethod
    def from_json(
        cls, payload: Mapping[str, Any], path: Path, version: int = VERSION
    ) -> Checkpoint:
        """The checkpoint a payload of format `version` holds; a version-2 payload has every
        field but `best_results` (one that has it is as malformed as it always was)."""
        fields = {field.name for field in attrs.fields(cls)} - {"version"}
        if version == WITHOUT_RESULTS:
            fields.discard("best_results")
        if set(payload) != fields:
            odd = sorted(set(payload) ^ fields)
            raise CheckpointError(
                f"{path}: malformed checkpoint (missing or unknown: {', '.join(odd)})"
            )
        step = _field(path, "step", lambda: check_int("step", payload["step"], 0))
        history = _field(path, "history", lambda: _history(payload["history"]))
        if len(history) != step or any(r.step != n for n, r in enumerate(history, 1)):
            steps = excerpt([record.step for record in history])
            raise CheckpointError(f"{path}: history: steps {steps} do not run 1..{step:,}")
        return cls(
            step=step,
            fingerprint=_field(
                path, "fingerprint", lambda: check_text("fingerprint", payload["fingerprint"])
            ),
            network=_field(path, "network", lambda: Network.from_json(payload["network"])),
            best_network=_field(
                path, "best_network", lambda: Network.from_json(payload["best_network"])
            ),
            best_score=_field(path, "best_score", lambda: _score(payload["best_score"])),
            initial_score=_field(path, "initial_score", lambda: _score(payload["initial_score"])),
            evaluations_since_best=_field(
                path,
                "evaluations_since_best",
                lambda: check_int("evaluations_since_best", payload["evaluations_since_best"], 0),
            ),
            best_results=(
                None
                if version == WITHOUT_RESULTS
                else _field(path, "best_results", lambda: _results(payload["best_results"]))
            ),
            memory=_field(path, "memory", lambda: Memory.from_json(MEMORY_SIZE, payload["memory"])),
            rng_state=_field(path, "rng_state", lambda: _rng_state(payload["rng_state"])),
            history=history,
            ledger=_field(path, "ledger", lambda: _ledger(payload["ledger"])),
            version=version,
        )

    def check_fits(self, net: Network, options: TrainerOptions, dev_size: int, path: Path) -> None:
        """CheckpointError unless this checkpoint could have been written by a run of `net`
        under `options` on a dev set of `dev_size` examples: its networks have the run's
        structure, the best network's results (when it has them: version 3) cover the dev set
        with best_score their mean (a comparison is decided against them), and what it counts stays
        within the run's settings (a crafted checkpoint could otherwise hold thousands of
        remembered parameters, each scored again at every step). The checksum proves
        nothing here: whoever edits a checkpoint can recompute it."""
        shape = _structure(net)
        for name, graph in (("network", self.network), ("best_network", self.best_network)):
            if _structure(graph) != shape:
                raise CheckpointError(
                    f"{path}: {name}: its nodes, templates or edges differ from the run's network"
                )
            for node_name, node in graph.nodes.items():
                most = max(options.max_demonstrations, len(net.node(node_name).demonstrations))
                if len(node.demonstrations) > most:
                    raise CheckpointError(
                        f"{path}: {name}: node {excerpt(node_name)} carries "
                        f"{len(node.demonstrations):,} demonstrations; this run's carry at most "
                        f"{most} (max_demonstrations)"
                    )
        for node_name in self.memory.names():
            if node_name not in net.nodes:
                raise CheckpointError(f"{path}: memory: unknown node {excerpt(node_name)}")
            count = len(self.memory.parameters(node_name))
            if count > options.memory_size:
                raise CheckpointError(
                    f"{path}: memory: node {excerpt(node_name)} remembers {count:,} parameters; "
                    f"this run remembers at most {options.memory_size} (memory_size)"
                )
        results = self.best_results
        if results is not None and len(results) != dev_size:
            raise CheckpointError(
                f"{path}: best_results: {len(results):,} results for {dev_size:,} dev examples"
            )
        if self.best_score is not None and results:
            mean = math.fsum(results) / len(results)
            if not math.isclose(mean, self.best_score, rel_tol=1e-9, abs_tol=1e-12):
                raise CheckpointError(
                    f"{path}: best_results: their mean {mean:g} is not best_score "
                    f"{self.best_score:g}"
                )
        if self.evaluations_since_best > self.step:
            raise CheckpointError(
                f"{path}: evaluations_since_best: {self.evaluations_since_best:,} evaluations "
                f"in {self.step:,} steps"
            )


def _structure(net: Network) -> list[dict[str, Any]]:
    """A network's nodes and edges without what training changes (prompts, demonstrations)."""
    document = net.to_json()
    nodes = [
        {k: v for k, v in node.items() if k not in ("prompt", "demonstrations")}
        for node in document["nodes"]
    ]
    return [*nodes, {"edges": document["edges"]}]


def _field(path: Path, name: str, parse: Callable[[], T]) -> T:
    try:
        return parse()
    except (GraphError, TypeError, ValueError, KeyError, IndexError) as error:
        raise CheckpointError(f"{path}: {name}: {error}") from error


def _score(value: object) -> float | None:
    if value is None:
        return None
    return check_number("score", value)  # a metric's mean: any finite number


def _results(value: object) -> list[float]:
    """The best network's metric score on each dev example: each any finite number, as
    `_score` reads their mean (a bool, text, NaN or an infinity is refused, naming its place)."""
    if not isinstance(value, list):
        raise TypeError(f"expected a list of per-example scores, got {excerpt(value)}")
    return [check_number(f"score [{index}]", each) for index, each in enumerate(value)]


def _rng_state(value: object) -> tuple[Any, ...]:
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[1], list)):
        raise TypeError("expected [version, [internal state], gauss]")
    state = (value[0], tuple(value[1]), value[2])
    random.Random().setstate(state)  # raises TypeError/ValueError for a state that is not one
    return state


def _history(value: object) -> list[StepRecord]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list of step records, got {excerpt(value)}")
    return [StepRecord.from_json(record) for record in value]


def _ledger(value: object) -> list[dict[str, Any]]:
    if not (isinstance(value, list) and all(isinstance(row, dict) for row in value)):
        raise TypeError("expected a list of objects")
    return value
