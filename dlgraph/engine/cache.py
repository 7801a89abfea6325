"""Answers already given, so a re-run or a resumed run repeats no call.

In memory by default; on disk in SQLite (WAL mode) when given a path, which several processes
may share: a write is one small transaction, and a lost race writes the same answer. Disk I/O
runs in a worker thread, never on the event loop, and is cancellable: a cancelled caller
returns at once and its statement is interrupted.

A cache never costs an answer: a read that fails is a miss, a write that fails is logged and
the answer is still returned, and a row that does not hold a valid answer for its request is a
miss (the new answer replaces it). A file that is not a dlgraph cache (garbage, a truncated
file, another program's database) is refused with its path when the engine opens, before any
call; it is never moved, changed or deleted. A file is a cache only if its schema is exactly
the one dlgraph creates: a trigger, view, index or table besides it (whose statements would run
with ours) makes it another program's, refused on opening and, should another program change
the schema later, no longer used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Protocol, TypeGuard, TypeVar

import anyio
import anyio.to_thread
import attrs

from dlgraph.backend import (
    ContinuationsRequest,
    GenerateRequest,
    LogprobRequest,
    Parted,
    Request,
    Result,
    SamplesRequest,
    logprob_value,
)
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.stage import Call, Outcome, Work
from dlgraph.errors import CacheError

logger = logging.getLogger(__name__)
T = TypeVar("T")

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


SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
MAX_ANSWER_CHARS = 1 << 20
"""A stored answer longer than this is not one of ours: a miss, never read whole."""
SchemaRow = tuple[str, str, str, str | None]


def _schema_of(connection: sqlite3.Connection) -> set[SchemaRow]:
    """Every object of a database's schema: tables, indexes, views, triggers."""
    return set(connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))


def _expected_schema() -> set[SchemaRow]:
    """What a cache dlgraph made holds, exactly (read from a scratch database, so that
    SQLite's own objects such as the primary keys' indexes are as SQLite names them)."""
    scratch = sqlite3.connect(":memory:")
    try:
        for statement in SCHEMA:
            scratch.execute(statement)
        return _schema_of(scratch)
    finally:
        scratch.close()


@attrs.define(eq=False)
class SqliteStore:
    """One SQLite file; every statement runs in a worker thread, one at a time.

    The file is trusted only if its schema is exactly the one dlgraph creates (no trigger,
    view, index or table besides it), checked on opening and again whenever another
    connection changes the schema; a cache that stops being ours is no longer used. A
    statement is cancellable: a cancelled caller returns at once and the statement is
    interrupted; the next one starts when its thread is done.
    """

    path: Path
    busy_timeout_s: float = 5.0
    """How long a statement waits for another process's lock before it gives up."""
    _connection: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _lock: anyio.Lock = attrs.field(factory=anyio.Lock, init=False)
    _idle: threading.Event = attrs.field(factory=threading.Event, init=False)
    _schema_version: int | None = attrs.field(default=None, init=False)
    _is_foreign: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self._idle.set()

    @classmethod
    async def open(cls, path: str | os.PathLike[str], busy_timeout_s: float = 5.0) -> SqliteStore:
        """Open or create a cache file; CacheError names a file that is not one."""
        store = cls(Path(path), busy_timeout_s)
        store._connection = await anyio.to_thread.run_sync(store._connect)
        try:
            await store._run(store._prepare)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.aclose()
            raise
        return store

    def _connect(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise CacheError(f"{self.path}: is a folder; the cache must be a file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as error:
            raise self._unusable(error) from error

    def _unusable(self, error: sqlite3.Error) -> CacheError:
        return CacheError(
            f"{self.path}: cannot be used as an answer cache ({error}); "
            "delete it or choose another cache path"
        )

    def _prepare(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute("PRAGMA trusted_schema = OFF")
            self._check_schema(connection)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as error:
            raise self._unusable(error) from error

    def _check_schema(self, connection: sqlite3.Connection) -> None:
        schema = _schema_of(connection)
        if not schema:
            self._create(connection)
            schema = _schema_of(connection)
        expected = _expected_schema()
        if schema != expected:
            odd = sorted(f"{kind} {name}" for kind, name, _, _ in schema ^ expected)
            raise CacheError(
                f"{self.path}: an SQLite database that is not a dlgraph answer cache "
                f"({_excerpt(odd)} differ from a cache's schema); choose another cache path"
            )
        meta = connection.execute("SELECT key, value FROM meta LIMIT 3").fetchall()
        if len(meta) != 2 or dict(meta) != {"format": FORMAT, "version": VERSION}:
            raise CacheError(
                f"{self.path}: an SQLite database that is not a dlgraph answer cache "
                "(its meta table says otherwise); choose another cache path"
            )
        self._schema_version = self._version(connection)

    @staticmethod
    def _create(connection: sqlite3.Connection) -> None:
        """Make an empty database a cache (unless another process just did)."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            if not _schema_of(connection):
                for statement in SCHEMA:
                    connection.execute(statement)
                connection.execute(
                    "INSERT INTO meta VALUES ('format', ?), ('version', ?)", (FORMAT, VERSION)
                )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    @staticmethod
    def _version(connection: sqlite3.Connection) -> int:
        return int(connection.execute("PRAGMA schema_version").fetchone()[0])

    def _still_ours(self, connection: sqlite3.Connection) -> bool:
        """Whether the schema is still exactly ours (checked again only if it changed)."""
        if self._is_foreign:
            return False
        if self._version(connection) == self._schema_version:
            return True
        if _schema_of(connection) == _expected_schema():
            self._schema_version = self._version(connection)
            return True
        self._is_foreign = True
        logger.warning(
            "%s: another program changed the cache's schema; it is no longer used", self.path
        )
        return False

    def _select(self, connection: sqlite3.Connection, digest: str) -> str | None:
        if not self._still_ours(connection):
            return None
        row = connection.execute(
            "SELECT value FROM answers WHERE key = ? AND length(value) <= ?",
            (digest, MAX_ANSWER_CHARS),
        ).fetchone()
        return None if row is None else str(row[0])

    def _insert(self, connection: sqlite3.Connection, digest: str, value: str) -> None:
        if self._still_ours(connection):
            connection.execute(
                "INSERT OR REPLACE INTO answers (key, value) VALUES (?, ?)", (digest, value)
            )

    async def _run(self, statement: Callable[..., T], *args: object) -> T:
        """Run `statement(connection, *args)` in a worker thread, one at a time; a cancelled
        caller interrupts it and returns at once."""
        async with self._lock:
            if not self._idle.is_set():  # an interrupted statement still winding down
                await anyio.to_thread.run_sync(self._idle.wait, abandon_on_cancel=True)
            connection = self._connection
            if connection is None:
                raise sqlite3.ProgrammingError("the cache is closed")
            self._idle.clear()
            try:
                return await anyio.to_thread.run_sync(
                    self._in_thread, statement, connection, args, abandon_on_cancel=True
                )
            except anyio.get_cancelled_exc_class():
                if not self._idle.is_set():
                    connection.interrupt()
                raise

    def _in_thread(
        self, statement: Callable[..., T], connection: sqlite3.Connection, args: tuple[object, ...]
    ) -> T:
        try:
            return statement(connection, *args)
        finally:
            self._idle.set()

    async def get(self, key: Hashable) -> object | None:
        try:
            text = await self._run(self._select, _digest(key))
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
            await self._run(self._insert, _digest(key), json.dumps(result))
        except sqlite3.Error as error:
            logger.warning(
                "%s: cache write failed (%s); the answer is used but not remembered",
                self.path,
                error,
            )

    async def aclose(self) -> None:
        """Close the file once no statement runs (an interrupted one finishes first)."""
        async with self._lock:
            connection, self._connection = self._connection, None
            if connection is None:
                return
            if not self._idle.is_set():
                connection.interrupt()
                await anyio.to_thread.run_sync(self._idle.wait)
            await anyio.to_thread.run_sync(connection.close)


def _excerpt(names: list[str]) -> str:
    shown = ", ".join(name[:60] for name in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


async def open_store(cache: bool | str | os.PathLike[str]) -> Store | None:
    """``True``: in memory; a path: SQLite on disk; ``False``: no cache."""
    if cache is False:
        return None
    if cache is True:
        return MemoryStore()
    return await SqliteStore.open(cache)


def _is_logprob(value: object) -> bool:
    """A log-probability as the engine answers one (`logprob_value`, after its rounding)."""
    return logprob_value(value) == value


def fits(value: object, work: Work) -> TypeGuard[Result | list[float]]:
    """Whether a stored value is a valid answer to this request (a foreign or damaged row is
    not, nor first-token alternatives with no alternative, which older versions could store).
    Continuations' values come back from disk (JSON) as a list, answered as a tuple."""
    if isinstance(work, GenerateRequest):
        return isinstance(value, str)
    if isinstance(work, LogprobRequest):
        return _is_logprob(value)
    if isinstance(work, ContinuationsRequest):
        return (
            isinstance(value, tuple | list)
            and len(value) == len(work.continuations)
            and all(_is_logprob(v) for v in value)
        )
    if isinstance(work, SamplesRequest):
        return False  # never kept whole: each sample is kept as its GenerateRequest
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and _is_logprob(v) for k, v in value.items())
    )


def _rest(work: Parted, missing: list[int]) -> tuple[Request, list[int]]:
    """What to send for the parts at `missing`, and the parts its answer holds: the request
    itself when none is known, one part alone (a `LogprobRequest` or `GenerateRequest`,
    which a coalescer can batch) for one, else those continuations, or the samples from the
    first missing seed to the last."""
    if len(missing) == work.size:
        return work, missing
    if len(missing) == 1:
        return work.each()[missing[0]], missing
    if isinstance(work, ContinuationsRequest):
        return attrs.evolve(work, continuations=[work.continuations[i] for i in missing]), missing
    return work.piece(missing[0], missing[-1] + 1), list(range(missing[0], missing[-1] + 1))


@attrs.define(eq=False)
class Cache:
    """Successful results by request key; failures are never cached. Each continuation of a
    `ContinuationsRequest` is kept as the `LogprobRequest` it equals, and each sample of a
    `SamplesRequest` as the `GenerateRequest` of its seed, so that no part is asked again
    once known: a request whose parts are all known is answered here; one for some of them
    sends the other continuations, or the samples from the first unknown seed to the last
    (one call; a known sample between them keeps its text)."""

    inner: Call
    key: Callable[[Work], Hashable]
    ledger: Ledger
    store: Store

    async def __call__(self, work: Work) -> Outcome:
        # a continuations request may be kept whole, as older versions kept it; samples never
        found = None if isinstance(work, SamplesRequest) else await self._get(work)
        if found is not None:
            self.ledger.add(work, cache_hits=1)
            return tuple(found) if isinstance(found, list) else found
        if isinstance(work, Parted):
            return await self._parts(work)
        result = await self.inner(work)
        assert not isinstance(result, list), "the cache sits above the coalescer"
        await self.store.put(self.key(work), result)
        return result

    async def _get(self, work: Work) -> Result | list[float] | None:
        found = await self.store.get(self.key(work))
        return found if found is not None and fits(found, work) else None

    async def _parts(self, work: Parted) -> tuple[float, ...] | tuple[str, ...]:
        """Those parts not known already, sent; each kept as the request it equals."""
        parts = work.each()
        values: list[object] = [await self._get(part) for part in parts]
        missing = [i for i, value in enumerate(values) if value is None]
        if not missing:
            self.ledger.add(work, cache_hits=1)
        else:
            rest, held = _rest(work, missing)
            with self.ledger.sent_for(work, rest):
                result = await self.inner(rest)
            answered = result if isinstance(result, tuple) else (result,)
            for i, value in zip(held, answered, strict=True):
                if values[i] is None:
                    values[i] = value
                    await self.store.put(self.key(parts[i]), value)  # type: ignore[arg-type]
        if isinstance(work, SamplesRequest):
            return tuple(str(value) for value in values)
        return tuple(float(value) for value in values)  # type: ignore[arg-type]
