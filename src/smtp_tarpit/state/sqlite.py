"""The SQLite client store (``[reputation] store = "sqlite:///path/state.db"``): one host, survives restarts.

One table, ``client_state(key, state, expires)``: the key (``ip:...``/``net:...``), the state encoded by
state/codec.py, and the wall-clock time at which it stops mattering (``ClientState.expires_at``).

Invariants:
- Nothing here blocks the event loop: every SQLite call runs in this store's one worker thread, where the
  connection was created and is the only one used. Calls run one at a time, in the order they were made.
- Each ``apply`` reads, runs ``change`` and writes inside a write transaction (BEGIN IMMEDIATE ... COMMIT),
  under SQLite's write lock, so two processes (or two stores) on one file never lose an update. A lock
  held by another process is waited for at most ``busy_timeout`` seconds, then StoreError.
- Group commit: the worker takes every call waiting when it is free, and consecutive ``apply`` calls
  among them (at most ``GROUP`` of them) share one transaction and one hand-off back to the event loop.
  Under load that was most of the store's cost: at two updates per accepted message, one transaction and
  one wake-up of the loop for each made a message cost 1.5 ms more CPU than with the memory store
  (bench/maildir_rate.py, ``smtp-tarpit-x1``). A SQLite error fails every call of its transaction (each
  caller gets StoreError, and nothing of it is written); a ``change`` that raises fails only its own call.
- Rows whose ``expires`` has passed are never returned (reads compare with ``now``) and are deleted by
  ``purge``; an idle state is deleted rather than written. A row that does not decode counts as absent.
- SQL is parameterised only; keys are checked (``check_key``) before they reach SQL.
- Every sqlite3 error becomes StoreError once the store is open; a file that cannot be opened at all is a
  ValueError from the constructor, naming the path.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from smtp_tarpit.handoff import Waiter, hand_back
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
GROUP = 256  # apply calls in one transaction at most: another process waits for the write lock meanwhile


class _Call(Waiter):
    """One call waiting for the worker: ``work`` (anything) or ``update`` (an apply's key, change, now
    and settings)."""

    __slots__ = ("update", "work")

    def __init__(
        self,
        work: Callable[[sqlite3.Connection], Any] | None,
        update: tuple[str, Change, float, PolicySettings] | None,
    ) -> None:
        super().__init__()
        self.work, self.update = work, update


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
        self._waiting: list[_Call] = []  # calls for the worker, oldest first
        self._lock = threading.Lock()
        self._draining = False  # the worker has been asked to drain the waiting calls
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
        return cast(ClientState, await self._submit(_Call(None, (key, change, now, self.settings))))

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
        return cast(T, await self._submit(_Call(work, None)))

    async def _submit(self, call: _Call) -> Any:
        if self._db is None:
            raise StoreError(f"SQLite store {self.path} is closed")
        with self._lock:
            self._waiting.append(call)
            start, self._draining = not self._draining, True
        if start:
            self._executor.submit(self._drain)
        return await call.future

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._waiting = self._waiting, []
                if not batch:
                    self._draining = False
                    return
            try:
                self._execute(batch)
            except Exception as exc:  # a bug of ours: every caller of the batch hears of it, never silence
                log.exception("SQLite store %s: the worker failed", self.path)
                for call in batch:
                    call.error = call.error or exc
            hand_back(batch)

    def _execute(self, batch: list[_Call]) -> None:
        start = 0
        while start < len(batch):
            if batch[start].update is None:
                self._call(batch[start])
                start += 1
                continue
            end = start
            while end < len(batch) and end - start < GROUP and batch[end].update is not None:
                end += 1
            self._apply(batch[start:end])
            start = end

    def _call(self, call: _Call) -> None:
        db = self._db
        if db is None or call.work is None:  # closed while this call waited
            call.error = StoreError(f"SQLite store {self.path} is closed")
            return
        try:
            call.result = call.work(db)
        except sqlite3.Error as exc:
            call.error = StoreError(f"SQLite store {self.path}: {exc}")
        except Exception as exc:
            call.error = exc

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

    def _apply(self, calls: list[_Call]) -> None:
        """The updates of ``calls``, one after another, in one write transaction."""
        db = self._db
        if db is None:
            for call in calls:
                call.error = StoreError(f"SQLite store {self.path} is closed")
            return
        try:
            # IMMEDIATE takes the write lock before the first read, so no other writer slips in between.
            db.execute("BEGIN IMMEDIATE")
            for call in calls:
                assert call.update is not None
                key, change, now, settings = call.update
                rows = db.execute(
                    "SELECT key, state FROM client_state WHERE key = ? AND expires > ?", (key, now)
                ).fetchall()
                try:
                    state = change(dict(self._live(rows, now, settings)).get(key, EMPTY))
                except Exception as exc:  # a bug in one change: its caller hears of it, the rest go on
                    call.error = exc
                    continue
                self._write(db, [(key, state)], now, settings)
                call.result = state
            db.execute("COMMIT")
        except Exception as exc:
            if db.in_transaction:
                db.rollback()
            error = StoreError(f"SQLite store {self.path}: {exc}") if isinstance(exc, sqlite3.Error) else exc
            for call in calls:
                call.result, call.error = None, error

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
