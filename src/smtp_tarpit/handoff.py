"""Results of work done in a worker thread, handed back to the event loops that wait for them.

A ``Waiter`` is one caller's share of a batch: the loop it waits on, its future, and what the worker left
for it (``result`` or ``error``). ``hand_back`` gives a whole batch back with one ``call_soon_threadsafe``
per loop (one wake-up of the loop for the batch, not one per waiter). Used by the Maildir writer threads
(delivery/committer.py) and the SQLite store's worker (state/sqlite.py), which both work in groups.

Invariants: a waiter's future is settled once, on its own loop; a waiter that stopped waiting (its future
cancelled: a timeout, a client gone) is skipped; a closed loop is skipped (nobody waits on it any more).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any


class Waiter:
    __slots__ = ("error", "future", "loop", "result")

    def __init__(self) -> None:
        """Made on the event loop of the caller that will wait for it."""
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = self.loop.create_future()
        self.result: Any = None
        self.error: BaseException | None = None


def hand_back(batch: Sequence[Waiter]) -> None:
    """From the worker thread: settle every waiter of ``batch`` on its loop."""
    for loop in {waiter.loop for waiter in batch}:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(_settle, [waiter for waiter in batch if waiter.loop is loop])


def _settle(waiters: list[Waiter]) -> None:
    for waiter in waiters:
        if waiter.future.done():  # cancelled: nothing to tell
            continue
        if waiter.error is None:
            waiter.future.set_result(waiter.result)
        else:
            waiter.future.set_exception(waiter.error)
