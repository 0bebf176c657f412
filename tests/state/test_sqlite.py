"""What the SQLite store does beyond the shared contract: its file, two processes on one file, and a lock
held by someone else costing a bounded wait in the worker thread while the event loop runs on."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from smtp_tarpit.policy.reputation import Observation, observe
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state.base import StoreError
from smtp_tarpit.state.sqlite import SqliteStore

SETTINGS = PolicySettings(half_life=600.0)
KEY = "net:192.0.2.0/24"
APPLIES = 300

# The other process: the same store class on the same file, the same key, at the same time.
OTHER_PROCESS = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from smtp_tarpit.policy.reputation import Observation, observe
    from smtp_tarpit.policy.settings import PolicySettings
    from smtp_tarpit.state.sqlite import SqliteStore

    async def main(path, count, start):
        settings = PolicySettings(half_life=600.0)
        store = SqliteStore(Path(path), settings, busy_timeout=10.0)
        while time.time() < start:
            await asyncio.sleep(0.005)
        now = time.time()
        try:
            await asyncio.gather(*(
                store.apply(sys.argv[4], lambda s: observe(s, Observation.ERROR, now, settings), now)
                for _ in range(count)
            ))
        finally:
            await store.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
    """
)


def test_the_file_is_created_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.db"

    async def scenario() -> None:
        store = SqliteStore(path, SETTINGS)
        await store.close()
        await store.close()  # twice is fine

    asyncio.run(scenario())
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT count(*) FROM client_state").fetchone()[0] == 0


def test_a_missing_directory_is_refused_by_name(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(ValueError, match=f"directory {missing} does not exist"):
        SqliteStore(missing / "state.db", SETTINGS)


def test_a_file_that_is_not_a_database_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not an SQLite database, it only has its name\n" * 100)
    with pytest.raises(ValueError, match=f"cannot open the SQLite store {path}"):
        SqliteStore(path, SETTINGS)


def test_a_closed_store_fails_with_store_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "state.db", SETTINGS)
        await store.close()
        with pytest.raises(StoreError, match="closed"):
            await store.load([KEY], time.time())

    asyncio.run(scenario())


def test_two_processes_applying_to_one_key_of_one_file_all_count(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    start = time.time() + 1.0  # both sides begin together, after the other process has imported

    async def ours() -> None:
        store = SqliteStore(path, SETTINGS, busy_timeout=10.0)
        try:
            while time.time() < start:
                await asyncio.sleep(0.005)
            now = time.time()
            await asyncio.gather(
                *(
                    store.apply(KEY, lambda s: observe(s, Observation.ERROR, now, SETTINGS), now)
                    for _ in range(APPLIES)
                )
            )
        finally:
            await store.close()

    other = subprocess.Popen([sys.executable, "-c", OTHER_PROCESS, str(path), str(APPLIES), str(start), KEY])
    try:
        asyncio.run(ours())
        assert other.wait(timeout=60) == 0
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()

    async def count() -> int:
        store = SqliteStore(path, SETTINGS)
        try:
            return (await store.load([KEY], time.time()))[KEY].count(Observation.ERROR)
        finally:
            await store.close()

    assert asyncio.run(count()) == 2 * APPLIES


def test_a_lock_held_elsewhere_waits_in_the_worker_thread_not_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    busy = 0.3

    async def scenario() -> None:
        store = SqliteStore(path, SETTINGS, busy_timeout=busy)
        blocker = sqlite3.connect(path, isolation_level=None)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        try:
            blocker.execute("BEGIN IMMEDIATE")  # another process's write transaction, say
            now = time.time()
            started = time.monotonic()
            with pytest.raises(StoreError, match="locked"):
                await store.apply(KEY, lambda s: observe(s, Observation.ERROR, now, SETTINGS), now)
            waited = time.monotonic() - started
            assert busy * 0.9 <= waited < busy + 0.5
            assert ticks >= waited / 0.01 * 0.5  # the loop kept running the whole time
            blocker.execute("ROLLBACK")
            state = await store.apply(KEY, lambda s: observe(s, Observation.ERROR, now, SETTINGS), now)
            assert state.count(Observation.ERROR) == 1  # the failed apply left nothing behind
        finally:
            ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticking
            blocker.close()
            await store.close()

    asyncio.run(scenario())


def test_updates_that_wait_together_share_one_transaction(tmp_path: Path) -> None:
    # While another connection holds the write lock, 50 updates pile up behind the first; once it is
    # released they commit together. Each commit appends the pages it changed to the WAL: 50 transactions
    # would write at least 50 frames, a group a handful.
    path = tmp_path / "state.db"
    wal = tmp_path / "state.db-wal"
    updates = 50

    async def scenario() -> list[int]:
        store = SqliteStore(path, SETTINGS, busy_timeout=5.0)
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            wal_before = wal.stat().st_size
            blocker.execute("BEGIN IMMEDIATE")
            asyncio.get_running_loop().call_later(0.3, blocker.execute, "ROLLBACK")
            now = time.time()
            states = await asyncio.gather(
                *(
                    store.apply(
                        f"ip:192.0.2.{n}", lambda s: observe(s, Observation.ERROR, now, SETTINGS), now
                    )
                    for n in range(updates)
                )
            )
            frames = (wal.stat().st_size - wal_before) // (4096 + 24)
            found = await store.load([f"ip:192.0.2.{n}" for n in range(updates)], now)
            return [frames, sum(s.count(Observation.ERROR) for s in states), len(found)]
        finally:
            blocker.close()
            await store.close()

    frames, counted, found = asyncio.run(scenario())
    assert (counted, found) == (updates, updates)
    assert frames < 20, f"{frames} WAL frames for {updates} updates: not grouped"


def test_a_change_that_raises_fails_only_its_own_update(tmp_path: Path) -> None:
    path = tmp_path / "state.db"

    def broken(state: object) -> object:
        raise ValueError("a bug in one change")

    async def scenario() -> tuple[list[object], dict[str, object]]:
        store = SqliteStore(path, SETTINGS)
        now = time.time()
        error = lambda s: observe(s, Observation.ERROR, now, SETTINGS)  # noqa: E731
        try:
            results = await asyncio.gather(
                store.apply("ip:192.0.2.1", error, now),
                store.apply("ip:192.0.2.2", broken, now),  # type: ignore[arg-type]
                store.apply("ip:192.0.2.3", error, now),
                return_exceptions=True,
            )
            found = await store.load(["ip:192.0.2.1", "ip:192.0.2.2", "ip:192.0.2.3"], now)
            return list(results), dict(found)
        finally:
            await store.close()

    results, found = asyncio.run(scenario())
    assert isinstance(results[1], ValueError)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    assert sorted(found) == ["ip:192.0.2.1", "ip:192.0.2.3"]
