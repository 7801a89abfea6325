"""Checkpoints: the whole training state after a step, written atomically, checked on load."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import attrs

from dlgraph._files import write_atomic
from dlgraph.errors import CheckpointError

FORMAT = "dlgraph.checkpoint"
VERSION = 1
FILENAME = "checkpoint.json"


def _digest(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@attrs.frozen(kw_only=True)
class Checkpoint:
    """Training state after `step` finished steps; `fingerprint` ties it to one run setup."""

    step: int
    fingerprint: str
    network: dict[str, Any]
    best_network: dict[str, Any]
    best_score: float | None
    initial_score: float | None
    evaluations_since_best: int
    memory: dict[str, dict[str, float]]
    rng_state: list[Any]
    history: list[dict[str, Any]]
    ledger: list[dict[str, Any]]

    def write(self, directory: str | os.PathLike[str]) -> Path:
        payload = attrs.asdict(self)
        document = {
            "format": FORMAT,
            "version": VERSION,
            "sha256": _digest(payload),
            "payload": payload,
        }
        path = Path(directory) / FILENAME
        write_atomic(path, json.dumps(document) + "\n")
        return path

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> Checkpoint | None:
        """The checkpoint in `directory`, None if there is none; refuses a damaged one."""
        path = Path(directory) / FILENAME
        if not path.exists():
            return None
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({error})") from error
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a dlgraph checkpoint")
        if document.get("version") != VERSION:
            raise CheckpointError(
                f"{path}: checkpoint version {document.get('version')!r}, expected {VERSION}"
            )
        payload = document.get("payload")
        if not isinstance(payload, dict) or document.get("sha256") != _digest(payload):
            raise CheckpointError(f"{path}: checksum mismatch, the checkpoint is corrupt")
        try:
            return cls(**payload)
        except TypeError as error:
            raise CheckpointError(f"{path}: malformed checkpoint ({error})") from error
