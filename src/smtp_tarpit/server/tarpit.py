"""Server-side glue of the tar pit: client keys, the client stores, observations, watch mode.

The session proposes a reply; ``Tarpit.decide`` asks the pure policy (``policy.engine.decide``) with the
client's remembered state and the session's facts, records what the policy observes, and returns the reply
to send and how (Pass, Delay or Disconnect). In watch mode the decision is logged and Pass is returned.

Two stores: ``store``, this process's ``MemoryStore``, which the policy reads synchronously, and, when
``[reputation] store`` names one, ``shared`` (SQLite or Redis, state/base.py), reached only through its
``Guard`` (state/guard.py's ``GuardedStore``: time limit, circuit breaker, fail-open). The shared store
is read when a session starts (before its greeting, with the DNS checks) and written when something is
observed; what it answers replaces the local copy, so every host sees what the others observed.

Invariants:
- Observations are folded into the local store synchronously, at the moment they happen (an unknown
  recipient at its RCPT), so every session of this process sees them at once; the shared store's write
  runs beside the session, never in front of a reply.
- A key observed while the shared store was unreachable is merged (``reputation.merge``), not replaced,
  when the store answers again: nothing seen locally during an outage is lost.
- Authenticated and exempt sessions never reach the store's score (the policy passes them; nothing is
  observed for them), so a legitimate sender's mistakes never build up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from typing import TYPE_CHECKING

from smtp_tarpit.observability.metrics import Stats
from smtp_tarpit.policy.decisions import (
    PASS,
    Decision,
    Delay,
    Disconnect,
    Pass,
    Replace,
    SessionFacts,
)
from smtp_tarpit.policy.engine import decide
from smtp_tarpit.policy.reputation import (
    EMPTY,
    UNKNOWN_CLIENT,
    ClientKeys,
    ClientState,
    ClientView,
    Observation,
    keys_for,
    merge,
    observe,
    weight,
)
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.protocol.replies import Reply
from smtp_tarpit.state.base import Change, ClientStore
from smtp_tarpit.state.guard import Guard, GuardedStore
from smtp_tarpit.state.memory import MemoryStore

if TYPE_CHECKING:
    from smtp_tarpit.policy.decisions import IPAddress
    from smtp_tarpit.server.runtime import Runtime

log = logging.getLogger("smtp_tarpit.tarpit")


class Tarpit:
    def __init__(self, runtime: Runtime, store: MemoryStore, shared: ClientStore | None = None) -> None:
        self.store = store
        self.shared: GuardedStore | None = None
        if shared is not None:
            config = runtime.config.reputation
            guard = Guard(store_name(config.store), config.store_timeout, config.store_retry_after)
            self.shared = GuardedStore(shared, guard)
        self.configure(runtime)
        self.decisions: dict[str, int] = {}
        self.flags = 0
        self.stats: Stats | None = None
        self.overloaded = False  # set by the server: the policy then uses the overload hard error limit
        self.unsynced: set[str] = set()  # keys observed here while the shared store was unreachable
        self._writes: set[asyncio.Task[None]] = set()

    def configure(self, runtime: Runtime) -> None:
        self.settings: PolicySettings = runtime.settings
        limit = runtime.config.limits.overload_hard_error_limit
        if self.settings.hard_error_limit:
            limit = min(limit, self.settings.hard_error_limit)
        self.overload_settings = dataclasses.replace(runtime.settings, hard_error_limit=limit)
        self.prefix_v4 = runtime.config.reputation.prefix_v4
        self.prefix_v6 = runtime.config.reputation.prefix_v6
        self.store.settings = runtime.settings
        if self.shared is not None:
            reputation = runtime.config.reputation
            self.shared.configure(runtime.settings, reputation.store_timeout, reputation.store_retry_after)

    @staticmethod
    def now() -> float:
        # Wall-clock seconds: states outlive the process (snapshots, shared stores), monotonic time does not.
        return time.time()

    def keys(self, client: IPAddress | None) -> ClientKeys | None:
        return None if client is None else keys_for(client, self.prefix_v4, self.prefix_v6)

    def view(self, keys: ClientKeys | None) -> ClientView:
        if keys is None:
            return UNKNOWN_CLIENT
        return ClientView(self.store.get(keys.exact), self.store.get(keys.prefix))

    # --- the shared store -----------------------------------------------------------------------------

    async def refresh(self, keys: ClientKeys | None) -> None:
        """Bring the client's records up to date from the shared store (no-op without one, or while it is
        away). Awaited before a session's greeting, bounded by ``[reputation] store_timeout``."""
        if keys is None or self.shared is None:
            return
        now, wanted = self.now(), [keys.exact, keys.prefix]
        found = await self.shared.load(wanted, now)
        if found is None:
            return
        for key in wanted:
            self._adopt(keys, key, found.get(key, EMPTY), now)

    async def forget(self, keys: ClientKeys) -> list[str]:
        """Forget a client here and in the shared store; the keys that were known somewhere."""
        forgotten = {key for key in (keys.exact, keys.prefix) if self.store.forget(key)}
        self.unsynced.difference_update((keys.exact, keys.prefix))
        if self.shared is not None:
            for key in (keys.exact, keys.prefix):
                if await self.shared.forget(key):
                    forgotten.add(key)
        return sorted(forgotten)

    def _adopt(self, keys: ClientKeys, key: str, remote: ClientState, now: float) -> None:
        local = self.store.get(key)
        if key in self.unsynced:
            # Seen here during an outage: keep both sides, and give the store what it missed.
            self.unsynced.discard(key)
            remote = merge(local, remote, now, self.settings)
            self._write(keys, key, functools.partial(merge, remote, now=now, settings=self.settings), now)
        self._note_flag(keys, key, local, remote, now)
        if remote is EMPTY:
            self.store.forget(key)
        else:
            self.store.put(key, remote, now)

    def _write(self, keys: ClientKeys, key: str, change: Change, now: float) -> None:
        shared = self.shared
        if shared is None:
            return

        async def write() -> None:
            state = await shared.apply(key, change, now)
            if state is None:
                self.unsynced.add(key)
                return
            local = self.store.get(key)
            if key in self.unsynced:
                # The store is back and this key holds what was seen here while it was away: keep both
                # sides (the store's answer lacks them), and give the store what it missed.
                self.unsynced.discard(key)
                state = merge(local, state, self.now(), self.settings)
                self._write(keys, key, functools.partial(merge, state, now=now, settings=self.settings), now)
            # A later observation of this host may already be in the local copy (its own write is on the
            # way and carries it): an older answer must not wipe it out.
            if state.at >= local.at:
                self._note_flag(keys, key, local, state, self.now())
                if state is EMPTY or state.idle(now, self.settings):
                    self.store.forget(key)
                else:
                    self.store.put(key, state, now)

        task = asyncio.get_running_loop().create_task(write())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def close(self) -> None:
        """Let the writes in flight finish (each bounded by the store timeout), then close the store."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self.shared is not None:
            await self.shared.close()

    # --- observations ---------------------------------------------------------------------------------

    def observe(self, keys: ClientKeys | None, observation: Observation) -> float:
        """Fold an observation into the client's records; return what it added to its score (>= 0)."""
        if keys is None:
            return 0.0
        now, settings = self.now(), self.settings
        for key, prefix in ((keys.exact, False), (keys.prefix, True)):
            change = functools.partial(
                observe, observation=observation, now=now, settings=settings, prefix=prefix
            )
            before = self.store.get(key)
            state = self.store.update(key, change, now)
            self._note_flag(keys, key, before, state, now)
            self._write(keys, key, change, now)
        return max(weight(observation, settings), 0.0)

    def _note_flag(
        self, keys: ClientKeys, key: str, before: ClientState, after: ClientState, now: float
    ) -> None:
        if before.flagged(now) or not after.flagged(now):
            return
        self.flags += 1
        settings = self.settings
        # One line per flag, in a fixed shape that fail2ban's filter (contrib/fail2ban) matches; in watch
        # mode a different one, so that nothing acts on a flag the tar pit does not apply.
        log.warning(
            "%s client=%s key=%s unknown=%d window=%.0fs hold=%.0fs",
            "watch: would flag as harvester" if settings.watch else "harvest flag",
            keys.exact.removeprefix("ip:"),
            key,
            len(after.unknowns),
            settings.harvest_window,
            settings.harvest_hold_for,
        )

    def decide(
        self, keys: ClientKeys | None, facts: SessionFacts, reply: Reply
    ) -> tuple[Reply, Pass | Delay | Disconnect]:
        settings = self.overload_settings if self.overloaded else self.settings
        decision = decide(self.view(keys), facts, reply, self.now(), settings)
        kind = _KINDS[type(decision)]
        self.decisions[kind] = self.decisions.get(kind, 0) + 1
        if self.settings.watch and decision is not PASS:
            log.info("watch: would %s for %s: %s", _describe(decision), facts.client, reply.code)
            return reply, PASS
        if isinstance(decision, Replace):
            return decision.reply, decision.then
        if isinstance(decision, Disconnect):
            if self.stats is not None:
                over = settings.hard_error_limit and facts.errors >= settings.hard_error_limit
                self.stats.cap("hard_error_limit" if over else "session_budget")
            return decision.reply, decision
        return reply, decision


_KINDS: dict[type, str] = {Pass: "pass", Delay: "delay", Replace: "replace", Disconnect: "disconnect"}


def _describe(decision: Decision) -> str:
    if isinstance(decision, Delay):
        return f"delay {decision.seconds:.1f}s"
    if isinstance(decision, Replace):
        return f"answer {decision.reply.code} instead, then {_describe(decision.then)}"
    if isinstance(decision, Disconnect):
        return "disconnect with 421"
    return "pass"


def store_name(url: str) -> str:
    """The store's URL without a password, for logs."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if scheme.startswith(("redis", "unix")) else url
