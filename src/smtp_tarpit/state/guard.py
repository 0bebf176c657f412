"""Fail-open access to a shared client store: a time limit per call and a circuit breaker.

A store that is down, slow or hung must never hold mail up. Every call goes through ``Guard.call``:
- it is cut at ``timeout`` seconds (the stores also set their own socket timeouts; this one also covers
  a SQLite file locked by another process and anything we did not foresee);
- after a failure the store is skipped for ``retry_after`` seconds (calls return None at once), so a hung
  store costs a session at most one timeout, not one per command; the first call after that tries again;
- a failure is counted every time (``errors``, exported as smtp_tarpit_store_errors_total) but logged once
  per episode: one line when the store goes away, one when it answers again.

``GuardedStore`` is a shared store with its Guard: the only way the server reaches one.

Invariants: ``call`` never raises (except cancellation); None means "use local state".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from smtp_tarpit.policy.reputation import ClientState
    from smtp_tarpit.policy.settings import PolicySettings
    from smtp_tarpit.state.base import Change, ClientStore

log = logging.getLogger("smtp_tarpit.store")
T = TypeVar("T")


class Guard:
    def __init__(
        self,
        name: str,
        timeout: float,
        retry_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.retry_after = retry_after
        self.clock = clock
        self.errors = 0
        self.skipped = 0
        self.down = False
        self._closed_until = 0.0  # the breaker is open (calls skipped) until then

    @property
    def up(self) -> bool:
        return not self.down

    async def call(self, what: str, operation: Callable[[], Awaitable[T]]) -> T | None:
        if self.down and self.clock() < self._closed_until:
            self.skipped += 1
            return None
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(what, exc)
            return None
        if self.down:
            self.down = False
            log.warning("client store %s answers again: using it", self.name)
        return result

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        self._closed_until = self.clock() + self.retry_after
        if not self.down:
            self.down = True
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            log.warning(
                "client store %s failed (%s: %s): using local state, retrying in %gs",
                self.name,
                what,
                reason,
                self.retry_after,
            )


class GuardedStore:
    """A shared client store reached only through its Guard: each call returns None when the store failed
    or is being skipped (the caller then uses local state), and never raises."""

    def __init__(self, store: ClientStore, guard: Guard) -> None:
        self.store = store
        self.guard = guard

    def configure(self, settings: PolicySettings, timeout: float, retry_after: float) -> None:
        self.store.settings = settings
        self.guard.timeout, self.guard.retry_after = timeout, retry_after

    async def load(self, keys: Sequence[str], now: float) -> dict[str, ClientState] | None:
        return await self.guard.call("load", lambda: self.store.load(keys, now))

    async def apply(self, key: str, change: Change, now: float) -> ClientState | None:
        return await self.guard.call("apply", lambda: self.store.apply(key, change, now))

    async def forget(self, key: str) -> bool | None:
        return await self.guard.call("forget", lambda: self.store.forget(key))

    async def purge(self, now: float) -> int | None:
        return await self.guard.call("purge", lambda: self.store.purge(now))

    async def close(self) -> None:
        await self.store.close()
