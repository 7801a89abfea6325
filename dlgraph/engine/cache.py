"""Answers already given, so a re-run or a resumed run repeats no call.

In memory by default; on disk in SQLite (WAL mode) when given a path, which several
processes may share: a write is one small transaction, and a lost race writes the same answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Protocol

import attrs

from dlgraph.backend import Result
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.stage import Call, Outcome, Work


class Store(Protocol):
    def get(self, key: Hashable) -> Result | None: ...
    def put(self, key: Hashable, result: Result) -> None: ...
    def close(self) -> None: ...


@attrs.define(eq=False)
class MemoryStore:
    _results: dict[Hashable, Result] = attrs.field(factory=dict)

    def get(self, key: Hashable) -> Result | None:
        return self._results.get(key)

    def put(self, key: Hashable, result: Result) -> None:
        self._results[key] = result

    def close(self) -> None:
        return None


def _digest(key: Hashable) -> str:
    return hashlib.sha256(repr(key).encode()).hexdigest()


@attrs.define(eq=False)
class SqliteStore:
    path: Path
    _connection: sqlite3.Connection = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )

    def get(self, key: Hashable) -> Result | None:
        row = self._connection.execute(
            "SELECT value FROM answers WHERE key = ?", (_digest(key),)
        ).fetchone()
        if row is None:
            return None
        value: Result = json.loads(row[0])
        return value

    def put(self, key: Hashable, result: Result) -> None:
        self._connection.execute(
            "INSERT OR REPLACE INTO answers (key, value) VALUES (?, ?)",
            (_digest(key), json.dumps(result)),
        )

    def close(self) -> None:
        self._connection.close()


def open_store(cache: bool | str | os.PathLike[str]) -> Store | None:
    """``True``: in memory; a path: SQLite on disk; ``False``: no cache."""
    if cache is False:
        return None
    if cache is True:
        return MemoryStore()
    return SqliteStore(Path(cache))


@attrs.define(eq=False)
class Cache:
    """Successful results by request key; failures are never cached."""

    inner: Call
    key: Callable[[Work], Hashable]
    ledger: Ledger
    store: Store

    async def __call__(self, work: Work) -> Outcome:
        key = self.key(work)
        found = self.store.get(key)
        if found is not None:
            self.ledger.add(work, cache_hits=1)
            return found
        result = await self.inner(work)
        assert not isinstance(result, list), "the cache sits above the coalescer"
        self.store.put(key, result)
        return result
