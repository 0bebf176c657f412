"""Snapshots of the memory store to a SQLite file (``[reputation] snapshot``), so that a server with the
default ``store = "memory"`` does not forget its harvesters on restart.

Invariants:
- A snapshot is written whole into a new file beside the old one and renamed over it (then the folder is
  fsynced): a crash while saving leaves the previous snapshot intact, never a half-written one.
- All file work runs in SQLite's worker thread or ``asyncio.to_thread``: nothing blocks the event loop.
- Only live states are saved; states read back are validated by the SQLite store (state/codec.py) and
  expired ones are skipped.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state.memory import MemoryStore
from smtp_tarpit.state.sqlite import SqliteStore


async def restore(path: Path, memory: MemoryStore, settings: PolicySettings, now: float) -> int:
    """Load a snapshot into ``memory``; return how many records came back (0 when there is none)."""
    if not await asyncio.to_thread(path.exists):
        return 0
    store = SqliteStore(path, settings)
    try:
        states = await store.scan(now, memory.max_entries)
    finally:
        await store.close()
    for key, state in states:
        memory.put(key, state, now)
    return len(states)


async def save(path: Path, memory: MemoryStore, settings: PolicySettings, now: float) -> int:
    """Write every live record of ``memory`` to ``path``, atomically; return how many."""
    states = {key: state for key, state in memory.items() if not state.idle(now, settings)}
    fresh = path.with_name(path.name + ".new")
    await asyncio.to_thread(_remove, fresh)
    store = SqliteStore(fresh, settings)
    try:
        await store.put(states, now)
    finally:
        await store.close()
    await asyncio.to_thread(_replace, fresh, path)
    return len(states)


def _remove(path: Path) -> None:
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)


def _replace(fresh: Path, path: Path) -> None:
    os.replace(fresh, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
