"""The answer cache's SQLite file: what it refuses and why, when it stops trusting a file another
program changes, how long an answer may be, and that a cancelled or closed cache neither
blocks, leaks its connection nor stores what it was told to forget."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from dlgraph_sim import ScriptedModel

import dlgraph as dg
from dlgraph.engine.cache import FORMAT, SCHEMA, VERSION, Cache, SqliteStore
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.stage import Work, request_key

CONNECT = sqlite3.connect
"""The real `sqlite3.connect`, for the test's own connections (the `opened` fixture wraps
the module's)."""
MEBIBYTE = 1 << 20


def key(request: Work) -> object:
    return request_key("test", request)


class Model:
    """Answers every prompt with `answer`, counting the calls (a miss costs one)."""

    def __init__(self, answer: str = "fresh") -> None:
        self.answer, self.asked = answer, 0

    async def __call__(self, work: Work) -> str:
        self.asked += 1
        return self.answer


async def ask(store: SqliteStore, model: Model, prompt: str = "hi") -> str:
    result = await Cache(model, key, Ledger(), store)(dg.GenerateRequest(prompt))
    assert isinstance(result, str)
    return result


def change(path: Path, *statements: str) -> None:
    """Another program changes the file."""
    connection = CONNECT(path, isolation_level=None)
    try:
        for statement in statements:
            connection.execute(statement)
    finally:
        connection.close()


def lock(path: Path, begin: str = "BEGIN IMMEDIATE") -> sqlite3.Connection:
    """Another program holds a lock on the file until its connection commits or closes."""
    connection = CONNECT(path, isolation_level=None)
    connection.execute(begin)
    connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return connection


class Tracked(sqlite3.Connection):
    """A connection that remembers whether it was closed (from whichever thread)."""

    was_closed = False

    def close(self) -> None:
        self.was_closed = True
        super().close()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Tracked]:
    """Every SQLite connection dlgraph opens during the test (held, so that only dlgraph's
    own `close` can close them, not the garbage collector)."""
    connections: list[Tracked] = []

    def recording(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = CONNECT(*args, **kwargs, factory=Tracked)
        assert isinstance(connection, Tracked)
        connections.append(connection)
        return connection

    monkeypatch.setattr(sqlite3, "connect", recording)
    return connections


def all_closed(connections: list[Tracked]) -> bool:
    return bool(connections) and all(connection.was_closed for connection in connections)


# -- what is refused, and how it is named --------------------------------------------------------


async def test_a_cache_path_that_cannot_be_opened_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    path.symlink_to(tmp_path / "gone" / "cache.sqlite")  # into a folder that does not exist
    model = ScriptedModel(generate=lambda r: "x")
    with pytest.raises(dg.CacheError, match=f"{path}: cannot be used as an answer cache"):
        async with dg.Engine(model, cache=path):
            pass
    assert model.calls == []


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE meta SET value = 'another.cache' WHERE key = 'format'",
        "UPDATE meta SET value = '2' WHERE key = 'version'",
        "INSERT INTO meta VALUES ('owner', 'another program')",
        "DELETE FROM meta WHERE key = 'version'",
    ],
    ids=["another format", "another version", "a third entry", "no version"],
)
async def test_a_meta_table_with_another_format_is_refused(tmp_path: Path, statement: str) -> None:
    path = tmp_path / "cache.sqlite"
    await (await SqliteStore.open(path)).aclose()
    change(path, statement)
    before = path.read_bytes()
    with pytest.raises(dg.CacheError, match=f"{path}: .* not a dlgraph .*meta table says other"):
        await SqliteStore.open(path)
    assert path.read_bytes() == before


LONG = "a_table_whose_name_goes_on_and_on_" + "x" * 40
SHOWN_LONG = ("table " + LONG)[:60]


@pytest.mark.parametrize(
    ("tables", "excerpt"),
    [
        (
            [LONG, "b", "c", "d", "e"],
            f"{SHOWN_LONG}, table b, table c, table d, table e differ",
        ),
        (
            [LONG, "b", "c", "d", "e", "f"],
            f"{SHOWN_LONG}, table b, table c, table d, table e and 1 more differ",
        ),
        (
            [LONG, "b", "c", "d", "e", "f", "g", "h"],
            f"{SHOWN_LONG}, table b, table c, table d, table e and 3 more differ",
        ),
    ],
    ids=["five", "six", "eight"],
)
async def test_a_refusal_names_at_most_five_odd_objects_each_cut_to_sixty_characters(
    tmp_path: Path, tables: list[str], excerpt: str
) -> None:
    path = tmp_path / "cache.sqlite"
    await (await SqliteStore.open(path)).aclose()
    change(path, *(f"CREATE TABLE {name} (x)" for name in tables))
    with pytest.raises(dg.CacheError) as refused:
        await SqliteStore.open(path)
    assert f"({excerpt} from a cache's schema)" in str(refused.value)


async def test_a_cache_created_while_another_program_reads_the_file_says_it_is_locked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cache.sqlite"
    path.touch()
    reader = lock(path, "BEGIN")  # a read transaction: our commit cannot take the file
    try:
        with pytest.raises(dg.CacheError, match=f"{path}: cannot be used .*database is locked"):
            await SqliteStore.open(path, busy_timeout_s=0.05)
    finally:
        reader.close()
    store = await SqliteStore.open(path)  # nothing half made is left behind: it is created now
    try:
        assert await ask(store, Model("first")) == "first"
        assert await ask(store, Model("second")) == "first"
    finally:
        await store.aclose()


# -- a schema another program changes ------------------------------------------------------------


async def test_a_cache_whose_schema_another_program_changes_is_no_longer_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite"
    caplog.set_level(logging.WARNING)
    store = await SqliteStore.open(path)
    try:
        assert await ask(store, Model("stored")) == "stored"
        change(path, "CREATE TABLE notes (text TEXT)")
        model = Model("fresh")
        assert await ask(store, model) == "fresh" and model.asked == 1
        assert await ask(store, model) == "fresh" and model.asked == 2  # still not used
        change(path, "DROP TABLE notes")  # exactly a cache's schema again: still not trusted
        assert await ask(store, model) == "fresh" and model.asked == 3
    finally:
        await store.aclose()
    assert [r.getMessage() for r in caplog.records if "no longer used" in r.getMessage()] == [
        f"{path}: another program changed the cache's schema; it is no longer used"
    ]
    connection = CONNECT(path)
    assert connection.execute("SELECT count(*) FROM answers").fetchone() == (1,)
    connection.close()


async def test_a_cache_whose_schema_another_program_changes_back_is_still_used(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cache.sqlite"
    store = await SqliteStore.open(path)
    try:
        assert await ask(store, Model("stored")) == "stored"
        change(path, "CREATE TABLE scratch (x)", "DROP TABLE scratch")
        model = Model("fresh")
        assert await ask(store, model) == "stored" and model.asked == 0
        assert await ask(store, model, "new") == "fresh"
        assert await ask(store, model, "new") == "fresh" and model.asked == 1
    finally:
        await store.aclose()


# -- how long an answer may be -------------------------------------------------------------------


def unsynced_cache(path: Path) -> sqlite3.Connection:
    """A cache file as dlgraph makes it, written without syncing to the disk (the test stays
    among the fastest, which the mutation script runs for a module constant), and the
    connection that made it: another program's, closed last so that it makes the checkpoint."""
    connection = CONNECT(path, isolation_level=None)
    connection.execute("PRAGMA synchronous = OFF")
    connection.execute("PRAGMA journal_mode = WAL")
    for statement in SCHEMA:
        connection.execute(statement)
    connection.execute("INSERT INTO meta VALUES ('format', ?), ('version', ?)", (FORMAT, VERSION))
    return connection


async def test_an_answer_longer_than_a_mebibyte_in_the_file_is_a_miss(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    other = unsynced_cache(path)
    try:
        store = await SqliteStore.open(path)
        try:
            await store.put("too long", "an answer")
            other.execute("UPDATE answers SET value = ?", (json.dumps("x" * (MEBIBYTE - 1)),))
            assert await store.get("too long") is None  # its JSON is a mebibyte and 1
        finally:
            await store.aclose()
    finally:
        other.close()


async def test_an_answer_of_a_mebibyte_in_the_file_is_an_answer(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "cache.sqlite")
    try:
        longest = "x" * (MEBIBYTE - 2)  # its JSON, quotes included, is one mebibyte
        await store.put("longest", longest)
        assert await store.get("longest") == longest
    finally:
        await store.aclose()


# -- closing, and cancelling -----------------------------------------------------------------


async def test_closing_a_cache_twice_is_harmless(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "cache.sqlite")
    await store.aclose()
    await store.aclose()


async def test_a_closed_cache_is_a_miss_and_forgets_writes_without_failing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    store = await SqliteStore.open(tmp_path / "cache.sqlite")
    assert await ask(store, Model("stored")) == "stored"
    await store.aclose()
    model = Model("fresh")
    assert await ask(store, model) == "fresh" and model.asked == 1
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "cache read failed (the cache is closed)" in messages
    assert "cache write failed (the cache is closed)" in messages


async def test_a_cache_closes_every_connection_it_opens(
    tmp_path: Path, opened: list[Tracked]
) -> None:
    store = await SqliteStore.open(tmp_path / "cache.sqlite")
    assert await ask(store, Model("stored")) == "stored"
    await store.aclose()
    assert len(opened) >= 2  # the file, and the scratch database the schema is compared with
    assert all_closed(opened)


async def test_a_cache_that_cannot_be_opened_is_closed_before_the_error(
    tmp_path: Path, opened: list[Tracked]
) -> None:
    path = tmp_path / "app.db"
    change(path, "CREATE TABLE users (name TEXT)")
    with pytest.raises(dg.CacheError, match="not a dlgraph answer cache"):
        await SqliteStore.open(path)
    assert all_closed(opened)


async def test_a_cache_whose_opening_is_cancelled_is_closed(
    tmp_path: Path, opened: list[Tracked]
) -> None:
    path = tmp_path / "cache.sqlite"
    path.touch()
    holder = lock(path, "BEGIN EXCLUSIVE")  # opening waits to read the schema
    try:
        with anyio.move_on_after(0.05) as waiting:
            await SqliteStore.open(path, busy_timeout_s=0.2)
    finally:
        holder.close()
    assert waiting.cancelled_caught
    assert all_closed(opened)


async def test_a_cancelled_write_is_interrupted_and_the_next_read_waits_for_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cache.sqlite"
    store = await SqliteStore.open(path, busy_timeout_s=2.0)
    try:
        holder = lock(path)  # the write waits for this lock
        try:
            started = time.monotonic()
            with anyio.move_on_after(0.05):
                await store.put("cancelled", "never stored")
            assert time.monotonic() - started < 0.5  # the caller returned at once
        finally:
            holder.close()
        # the read waits for the interrupted write, which stored nothing once the lock was free
        assert await store.get("cancelled") is None
        await store.put("cancelled", "stored now")
        assert await store.get("cancelled") == "stored now"
    finally:
        await store.aclose()


async def test_a_cancelled_read_waiting_behind_an_interrupted_write_returns_at_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cache.sqlite"
    store = await SqliteStore.open(path, busy_timeout_s=2.0)
    try:
        await store.put("stored", "answer")
        holder = lock(path)
        try:
            with anyio.move_on_after(0.05):
                await store.put("cancelled", "never stored")
            started = time.monotonic()
            with anyio.move_on_after(0.05) as reading:
                await store.get("stored")  # behind the write, still waiting for the lock
            assert reading.cancelled_caught
            assert time.monotonic() - started < 0.5  # not the 2 s the write may wait
        finally:
            holder.close()
        assert await store.get("stored") == "answer"
    finally:
        await store.aclose()
