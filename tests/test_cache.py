"""The answer cache on disk: never on the event loop, never costs an answer, refuses a file
that is not a dlgraph cache with its path."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time

import anyio
import pytest
from dlgraph_sim import ScriptedModel

import dlgraph as dg
from dlgraph.engine.cache import Cache, SqliteStore
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.stage import request_key


def key(request):
    return request_key("test", request)


async def answer(work) -> str:
    return f"answer to {work.prompt}"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a database, just some bytes" * 50, "file is not a database"),
        (b"SQLite format 3\x00" + b"\x00" * 40, "cannot be used as an answer cache"),
    ],
    ids=["garbage", "truncated"],
)
async def test_a_file_that_is_not_a_database_is_refused_with_its_path(
    tmp_path, content, message
) -> None:
    path = tmp_path / "cache.sqlite"
    path.write_bytes(content)
    model = ScriptedModel(generate=lambda r: "x")
    with pytest.raises(dg.CacheError, match=f"{path}: .*{message}|{path}: cannot be used"):
        async with dg.Engine(model, cache=path) as engine:
            await engine.generate("hi")
    assert model.calls == [] and path.read_bytes() == content  # refused, never changed


async def test_another_programs_database_is_refused_and_left_alone(tmp_path) -> None:
    path = tmp_path / "app.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE users (name TEXT)")
    connection.commit()
    connection.close()
    before = path.read_bytes()
    with pytest.raises(dg.CacheError, match=f"{path}: an SQLite database that is not a dlgraph"):
        async with dg.Engine(ScriptedModel(), cache=path):
            pass
    assert path.read_bytes() == before


async def test_a_row_without_a_valid_answer_is_a_miss_and_is_replaced(tmp_path, caplog) -> None:
    path = tmp_path / "cache.sqlite"
    store = await SqliteStore.open(path)
    await Cache(answer, key, Ledger(), store)(dg.GenerateRequest("a"))
    await Cache(answer, key, Ledger(), store)(dg.GenerateRequest("b"))
    await store.aclose()
    connection = sqlite3.connect(path)
    rows = connection.execute("SELECT key FROM answers ORDER BY key").fetchall()
    connection.execute("UPDATE answers SET value = '{broken' WHERE key = ?", rows[0])
    connection.execute("UPDATE answers SET value = '42' WHERE key = ?", rows[1])  # not a text
    connection.commit()
    connection.close()
    calls: list[str] = []

    async def counting(work) -> str:
        calls.append(work.prompt)
        return await answer(work)

    store = await SqliteStore.open(path)
    ledger = Ledger()
    cache = Cache(counting, key, ledger, store)
    assert await cache(dg.GenerateRequest("a")) == "answer to a"
    assert await cache(dg.GenerateRequest("b")) == "answer to b"
    assert sorted(calls) == ["a", "b"]
    assert await cache(dg.GenerateRequest("a")) == "answer to a" and len(calls) == 2
    await store.aclose()


async def test_a_locked_cache_neither_blocks_the_loop_nor_loses_the_answer(
    tmp_path, caplog
) -> None:
    path = tmp_path / "cache.sqlite"
    await (await SqliteStore.open(path)).aclose()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        caplog.set_level(logging.WARNING)
        store = await SqliteStore.open(path, busy_timeout_s=1.0)
        ticks = 0
        done = anyio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as group:
            group.start_soon(ticker)
            result = await Cache(answer, key, Ledger(), store)(dg.GenerateRequest("paid"))
            done.set()
        await store.aclose()
    finally:
        holder.kill()
        holder.communicate()
    assert result == "answer to paid"
    assert ticks >= 20  # the loop kept running while the write waited for the lock
    assert any(
        "cache write failed" in r.getMessage() and str(path) in r.getMessage()
        for r in caplog.records
    )


RECURSIVE_VIEW = (
    "CREATE VIEW forever AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
    "SELECT count(*) FROM n"
)
SLOW_TRIGGER = "CREATE TRIGGER slow AFTER INSERT ON answers BEGIN SELECT * FROM forever; END"


async def a_cache(path) -> None:
    """A cache file as dlgraph makes it."""
    await (await SqliteStore.open(path)).aclose()


def change(path, *statements: str) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        connection.execute(statement)
    connection.close()


@pytest.mark.parametrize(
    ("statements", "named"),
    [
        ((RECURSIVE_VIEW, SLOW_TRIGGER), "trigger slow"),
        ((RECURSIVE_VIEW,), "view forever"),
        (("CREATE INDEX by_value ON answers (value)",), "index by_value"),
        (("CREATE TABLE notes (text TEXT)",), "table notes"),
        (
            (
                "DROP TABLE answers",
                "CREATE TABLE answers (key TEXT PRIMARY KEY, value TEXT NOT NULL "
                "DEFAULT (zeroblob(1000000000)))",
            ),
            "table answers",
        ),
    ],
    ids=["trigger over a recursive view", "view", "index", "extra table", "altered table"],
)
async def test_a_cache_with_anything_dlgraph_did_not_create_is_refused_and_left_alone(
    tmp_path, statements, named
) -> None:
    path = tmp_path / "cache.sqlite"
    await a_cache(path)
    change(path, *statements)
    before = path.read_bytes()
    model = ScriptedModel()
    with pytest.raises(dg.CacheError, match=f"{path}: an SQLite database .*{named}"):
        async with dg.Engine(model, cache=path):
            pass
    assert path.read_bytes() == before and model.calls == []


CHANGED_AFTER_OPENING = f"""
import json, logging, sqlite3, sys
import anyio
import dlgraph as dg
from dlgraph_sim import ScriptedModel

async def main(path):
    model = ScriptedModel(generate=lambda r: "fresh")
    async with dg.Engine(model, cache=path) as engine:
        await engine.generate("stored")
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute({RECURSIVE_VIEW!r})
        connection.execute({SLOW_TRIGGER!r})
        connection.close()
        with anyio.fail_after(10):
            answers = [await engine.generate("new"), await engine.generate("stored")]
    print(json.dumps({{"answers": answers, "asked": [c.request.prompt for c in model.calls]}}))

logging.basicConfig(level=logging.WARNING)
anyio.run(main, sys.argv[1])
"""


def test_a_cache_another_program_changes_after_opening_is_no_longer_used(tmp_path) -> None:
    """In a process of its own: were the trigger to fire, its thread would never end."""
    path = tmp_path / "cache.sqlite"
    finished = subprocess.run(
        [sys.executable, "-c", CHANGED_AFTER_OPENING, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    outcome = json.loads(finished.stdout)
    assert outcome == {"answers": ["fresh", "fresh"], "asked": ["stored", "new", "stored"]}
    assert "no longer used" in finished.stderr
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT count(*) FROM answers").fetchone() == (1,)
    connection.close()


@pytest.mark.timeout(60)
async def test_a_cache_write_waiting_for_a_lock_is_cancelled_at_once(tmp_path) -> None:
    path = tmp_path / "cache.sqlite"
    await a_cache(path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        async with dg.Engine(ScriptedModel(generate=lambda r: "ok"), cache=path) as engine:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.5):
                    await engine.generate("waits for the lock")
            waited_s = time.monotonic() - started
            holder.communicate("release\n", timeout=10)
            assert await engine.generate("after the lock") == "ok"
    finally:
        holder.kill()
        holder.communicate()
    assert waited_s < 2.0  # not the 5 s the write would wait for the lock


async def cache_on_disk_holding(path, request, stored: str) -> None:
    """A cache file whose one row, the answer to `request`, holds `stored` (JSON text)."""
    store = await SqliteStore.open(path)

    async def model(work) -> float:
        return -1.5

    await Cache(model, key, Ledger(), store)(request)
    await store.aclose()
    connection = sqlite3.connect(path)
    connection.execute("UPDATE answers SET value = ?", (stored,))
    connection.commit()
    connection.close()


async def ask_cache_on_disk(path, request) -> tuple[object, int]:
    """The answer to `request` through the cache on disk, and how many calls it cost."""
    calls: list[object] = []

    async def model(work) -> float:
        calls.append(work)
        return -1.5

    store = await SqliteStore.open(path)
    try:
        result = await Cache(model, key, Ledger(), store)(request)
    finally:
        await store.aclose()
    return result, len(calls)


async def test_a_cached_log_probability_above_zero_is_a_miss_and_the_model_is_asked(
    tmp_path,
) -> None:
    path, request = tmp_path / "cache.sqlite", dg.LogprobRequest("The sky is", " blue")
    await cache_on_disk_holding(path, request, "0.5")  # no probability is above 1
    assert await ask_cache_on_disk(path, request) == (-1.5, 1)


async def test_a_cached_log_probability_of_zero_is_an_answer(tmp_path) -> None:
    path, request = tmp_path / "cache.sqlite", dg.LogprobRequest("The sky is", " blue")
    await cache_on_disk_holding(path, request, "0.0")  # a certain target
    assert await ask_cache_on_disk(path, request) == (0.0, 0)
