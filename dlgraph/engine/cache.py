"""Answers already given, so a re-run or a resumed run repeats no call.

In memory by default; on disk in SQLite (WAL mode) when given a path, which several processes
may share: a write is one small transaction, and a lost race writes the same answer. Disk I/O
runs in a worker thread, never on the event loop.

A cache never costs an answer: a read that fails is a miss, a write that fails is logged and
the answer is still returned, and a row that does not hold a valid answer for its request is a
miss (the new answer replaces it). A file that is not a dlgraph cache (garbage, a truncated
file, another program's database) is refused with its path when the engine opens, before any
call; it is never moved, changed or deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Protocol, TypeGuard

import anyio
import anyio.to_thread
import attrs

from dlgraph.backend import GenerateRequest, LogprobRequest, Result
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.stage import Call, Outcome, Work
from dlgraph.errors import CacheError

logger = logging.getLogger(__name__)

FORMAT = "dlgraph.cache"
VERSION = "1"


class Store(Protocol):
    async def get(self, key: Hashable) -> object | None: ...
    async def put(self, key: Hashable, result: Result) -> None: ...
    async def aclose(self) -> None: ...


@attrs.define(eq=False)
class MemoryStore:
    _results: dict[Hashable, Result] = attrs.field(factory=dict)

    async def get(self, key: Hashable) -> object | None:
        return self._results.get(key)

    async def put(self, key: Hashable, result: Result) -> None:
        self._results[key] = result

    async def aclose(self) -> None:
        return None


def _digest(key: Hashable) -> str:
    return hashlib.sha256(repr(key).encode()).hexdigest()


@attrs.define(eq=False)
class SqliteStore:
    """One SQLite file; every statement runs in a worker thread, one at a time."""

    path: Path
    busy_timeout_s: float = 5.0
    """How long a statement waits for another process's lock before it gives up."""
    _connection: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _limiter: anyio.CapacityLimiter = attrs.field(
        factory=lambda: anyio.CapacityLimiter(1), init=False
    )

    @classmethod
    async def open(cls, path: str | os.PathLike[str], busy_timeout_s: float = 5.0) -> SqliteStore:
        """Open or create a cache file; CacheError names a file that is not one."""
        store = cls(Path(path), busy_timeout_s)
        await anyio.to_thread.run_sync(store._open, limiter=store._limiter)
        return store

    def _open(self) -> None:
        if self.path.is_dir():
            raise CacheError(f"{self.path}: is a folder; the cache must be a file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            self._check_schema(connection)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        except BaseException as error:
            connection.close()
            if isinstance(error, sqlite3.DatabaseError):
                raise CacheError(
                    f"{self.path}: cannot be used as an answer cache ({error}); "
                    "delete it or choose another cache path"
                ) from error
            raise
        self._connection = connection

    def _check_schema(self, connection: sqlite3.Connection) -> None:
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if not tables:
            connection.executescript(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                "CREATE TABLE answers (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                f"INSERT INTO meta VALUES ('format', '{FORMAT}'), ('version', '{VERSION}');"
            )
            return
        meta = dict(connection.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
        if tables != {"meta", "answers"} or meta != {"format": FORMAT, "version": VERSION}:
            raise CacheError(
                f"{self.path}: an SQLite database that is not a dlgraph answer cache "
                f"(tables: {', '.join(sorted(tables))}); choose another cache path"
            )

    def _select(self, digest: str) -> str | None:
        assert self._connection is not None
        row = self._connection.execute(
            "SELECT value FROM answers WHERE key = ?", (digest,)
        ).fetchone()
        return None if row is None else str(row[0])

    def _insert(self, digest: str, value: str) -> None:
        assert self._connection is not None
        self._connection.execute(
            "INSERT OR REPLACE INTO answers (key, value) VALUES (?, ?)", (digest, value)
        )

    async def get(self, key: Hashable) -> object | None:
        try:
            text = await anyio.to_thread.run_sync(self._select, _digest(key), limiter=self._limiter)
        except sqlite3.Error as error:
            logger.warning("%s: cache read failed (%s); asking the model instead", self.path, error)
            return None
        if text is None:
            return None
        try:
            value: object = json.loads(text)
        except ValueError:
            logger.warning("%s: a cached answer is not valid JSON; asking the model", self.path)
            return None
        return value

    async def put(self, key: Hashable, result: Result) -> None:
        try:
            await anyio.to_thread.run_sync(
                self._insert, _digest(key), json.dumps(result), limiter=self._limiter
            )
        except sqlite3.Error as error:
            logger.warning(
                "%s: cache write failed (%s); the answer is used but not remembered",
                self.path,
                error,
            )

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await anyio.to_thread.run_sync(connection.close, limiter=self._limiter)


async def open_store(cache: bool | str | os.PathLike[str]) -> Store | None:
    """``True``: in memory; a path: SQLite on disk; ``False``: no cache."""
    if cache is False:
        return None
    if cache is True:
        return MemoryStore()
    return await SqliteStore.open(cache)


def fits(value: object, work: Work) -> TypeGuard[Result]:
    """Whether a stored value is a valid answer to this request (a foreign or damaged row is
    not, nor first-token alternatives with no alternative, which older versions could store)."""
    if isinstance(work, GenerateRequest):
        return isinstance(value, str)
    if isinstance(work, LogprobRequest):
        return isinstance(value, int | float) and not isinstance(value, bool) and value <= 0
    return (
        isinstance(value, dict)
        and bool(value)
        and all(
            isinstance(k, str) and isinstance(v, int | float) and not math.isnan(v)
            for k, v in value.items()
        )
    )


@attrs.define(eq=False)
class Cache:
    """Successful results by request key; failures are never cached."""

    inner: Call
    key: Callable[[Work], Hashable]
    ledger: Ledger
    store: Store

    async def __call__(self, work: Work) -> Outcome:
        key = self.key(work)
        found = await self.store.get(key)
        if found is not None and fits(found, work):
            self.ledger.add(work, cache_hits=1)
            return found
        result = await self.inner(work)
        assert not isinstance(result, list), "the cache sits above the coalescer"
        await self.store.put(key, result)
        return result
