"""The SQLite client store (``[reputation] store = "sqlite:///path/state.db"``): one host, survives restarts.

One table, ``client_state(key, state, expires)``: the key (``ip:...``/``net:...``), the state encoded by
state/codec.py, and the wall-clock time at which it stops mattering (``ClientState.expires_at``).

Invariants:
- Nothing here blocks the event loop: every SQLite call runs in this store's one worker thread (a
  single-thread executor), where the connection was created and is the only one used. Calls therefore run
  one at a time, in the order they were made.
- ``apply`` is one write transaction (BEGIN IMMEDIATE ... COMMIT): the read, ``change`` and the write
  happen under SQLite's write lock, so two processes (or two stores) on one file never lose an update.
  A lock held by another process is waited for at most ``busy_timeout`` seconds, then StoreError.
- Rows whose ``expires`` has passed are never returned (reads compare with ``now``) and are deleted by
  ``purge``; an idle state is deleted rather than written. A row that does not decode counts as absent.
- SQL is parameterised only; keys are checked (``check_key``) before they reach SQL.
- Every sqlite3 error becomes StoreError once the store is open; a file that cannot be opened at all is a
  ValueError from the constructor, naming the path.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from smtp_tarpit.policy.reputation import EMPTY, ClientState
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state import codec
from smtp_tarpit.state.base import Change, StoreError, check_key

log = logging.getLogger("smtp_tarpit.store")
T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS client_state ("
    " key TEXT PRIMARY KEY NOT NULL, state BLOB NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS client_state_expires ON client_state (expires)",
)
_CHUNK = 500  # keys per SELECT ... IN (...): well below SQLite's limit on bound parameters
_FETCH = 200  # rows read at once while scanning


class SqliteStore:
    def __init__(self, path: Path, settings: PolicySettings, *, busy_timeout: float = 1.0) -> None:
        """Open (or create) the database at ``path``. This waits for the worker thread to open the file,
        at most about ``busy_timeout`` seconds, so that a bad path fails at startup with its name rather
        than at the first client."""
        self.path = path
        self.settings = settings
        self.busy_timeout = busy_timeout
        if not path.parent.is_dir():
            raise ValueError(f"cannot create the SQLite store {path}: directory {path.parent} does not exist")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._db: sqlite3.Connection | None = None
        try:
            self._executor.submit(self._open).result()
        except sqlite3.Error as exc:
            self._executor.shutdown(wait=False)
            raise ValueError(f"cannot open the SQLite store {path}: {exc}") from exc

    def _open(self) -> None:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly what we say.
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode}, WAL is needed")
            # NORMAL with WAL survives a crash of the process; a power loss may lose the last few
            # transactions, which for reputation data costs nothing that matters, and saves an fsync each.
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                db.execute(statement)
        except BaseException:
            db.close()
            raise
        self._db = db

    # --- the ClientStore interface ------------------------------------------------------------------

    async def load(self, keys: Sequence[str], now: float) -> dict[str, ClientState]:
        wanted = [check_key(key) for key in keys]
        settings = self.settings
        return await self._run(lambda db: self._load(db, wanted, now, settings))

    async def apply(self, key: str, change: Change, now: float) -> ClientState:
        check_key(key)
        settings = self.settings
        return await self._run(lambda db: self._apply(db, key, change, now, settings))

    async def put(self, states: Mapping[str, ClientState], now: float) -> None:
        items = [(check_key(key), state) for key, state in states.items()]
        settings = self.settings
        await self._run(lambda db: self._put(db, items, now, settings))

    async def forget(self, key: str) -> bool:
        check_key(key)
        deleted = await self._run(lambda db: db.execute("DELETE FROM client_state WHERE key = ?", (key,)))
        return deleted.rowcount > 0

    async def scan(self, now: float, limit: int) -> list[tuple[str, ClientState]]:
        settings = self.settings
        return await self._run(lambda db: self._scan(db, now, limit, settings))

    async def purge(self, now: float) -> int:
        purge = "DELETE FROM client_state WHERE expires <= ?"
        deleted = await self._run(lambda db: db.execute(purge, (now,)))
        return deleted.rowcount

    async def close(self) -> None:
        if self._db is not None:
            try:
                await self._run(lambda db: db.close())
            finally:
                self._db = None
                self._executor.shutdown(wait=False)

    # --- in the worker thread -----------------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            raise StoreError(f"SQLite store {self.path} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, work)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:  # closed while this call waited in the queue
            raise StoreError(f"SQLite store {self.path} is closed")
        return work(db)

    def _load(
        self, db: sqlite3.Connection, keys: list[str], now: float, settings: PolicySettings
    ) -> dict[str, ClientState]:
        found: dict[str, ClientState] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))  # placeholders only: the keys themselves are bound
            rows = db.execute(
                f"SELECT key, state FROM client_state WHERE key IN ({marks}) AND expires > ?",
                (*chunk, now),
            )
            found.update(self._live(rows, now, settings))
        return found

    def _apply(
        self, db: sqlite3.Connection, key: str, change: Change, now: float, settings: PolicySettings
    ) -> ClientState:
        # IMMEDIATE takes the write lock before the read, so no other writer can slip in between.
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                "SELECT key, state FROM client_state WHERE key = ? AND expires > ?", (key, now)
            ).fetchall()
            state = change(dict(self._live(rows, now, settings)).get(key, EMPTY))
            self._write(db, [(key, state)], now, settings)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise
        return state

    def _put(
        self,
        db: sqlite3.Connection,
        items: list[tuple[str, ClientState]],
        now: float,
        settings: PolicySettings,
    ) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            self._write(db, items, now, settings)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise

    @staticmethod
    def _write(
        db: sqlite3.Connection, items: list[tuple[str, ClientState]], now: float, settings: PolicySettings
    ) -> None:
        idle = [(key,) for key, state in items if state.idle(now, settings)]
        live = [
            (key, codec.encode(state), state.expires_at(settings))
            for key, state in items
            if not state.idle(now, settings)
        ]
        db.executemany("DELETE FROM client_state WHERE key = ?", idle)
        db.executemany("INSERT OR REPLACE INTO client_state (key, state, expires) VALUES (?, ?, ?)", live)

    def _scan(
        self, db: sqlite3.Connection, now: float, limit: int, settings: PolicySettings
    ) -> list[tuple[str, ClientState]]:
        found: list[tuple[str, ClientState]] = []
        cursor = db.execute("SELECT key, state FROM client_state WHERE expires > ?", (now,))
        while len(found) < limit:
            rows = cursor.fetchmany(_FETCH)
            if not rows:
                break
            found.extend(self._live(rows, now, settings))
        cursor.close()
        return found[: max(limit, 0)]

    def _live(
        self, rows: Iterable[tuple[object, object]], now: float, settings: PolicySettings
    ) -> Iterable[tuple[str, ClientState]]:
        """The rows that hold a live state of a client key; anything else is skipped (and logged)."""
        for key, value in rows:
            try:
                if not isinstance(key, str):
                    raise ValueError("key is not text")
                check_key(key)
                # Text, not a blob, if written by hand with the sqlite3 shell, say.
                data = value.encode() if isinstance(value, str) else value
                if not isinstance(data, bytes):
                    raise ValueError(f"state is {type(data).__name__}")
                state = codec.decode(data, settings)
            except ValueError as exc:
                log.debug("SQLite store %s: skipping the record of %r: %s", self.path, key, exc)
                continue
            if not state.idle(now, settings):
                yield key, state
