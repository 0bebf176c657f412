"""Server-side glue of the tar pit: client keys, the client store, observations, watch mode.

The session proposes a reply; ``Tarpit.decide`` asks the pure policy (``policy.engine.decide``) with the
client's remembered state and the session's facts, records what the policy observes, and returns the reply
to send and how (Pass, Delay or Disconnect). In watch mode the decision is logged and Pass is returned.

Invariants:
- Observations are folded into the store synchronously, at the moment they happen (an unknown recipient at
  its RCPT), so every session of this process sees them at once.
- Authenticated and exempt sessions never reach the store's score (the policy passes them; nothing is
  observed for them), so a legitimate sender's mistakes never build up.
"""

from __future__ import annotations

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
    UNKNOWN_CLIENT,
    ClientKeys,
    ClientView,
    Observation,
    keys_for,
    observe,
    weight,
)
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.protocol.replies import Reply
from smtp_tarpit.state.memory import MemoryStore

if TYPE_CHECKING:
    from smtp_tarpit.policy.decisions import IPAddress
    from smtp_tarpit.server.runtime import Runtime

log = logging.getLogger("smtp_tarpit.tarpit")


class Tarpit:
    def __init__(self, runtime: Runtime, store: MemoryStore) -> None:
        self.store = store
        self.configure(runtime)
        self.decisions: dict[str, int] = {}
        self.flags = 0
        self.stats: Stats | None = None

    def configure(self, runtime: Runtime) -> None:
        self.settings: PolicySettings = runtime.settings
        self.prefix_v4 = runtime.config.reputation.prefix_v4
        self.prefix_v6 = runtime.config.reputation.prefix_v6
        self.store.settings = runtime.settings

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

    def observe(self, keys: ClientKeys | None, observation: Observation) -> float:
        """Fold an observation into the client's records; return what it added to its score (>= 0)."""
        if keys is None:
            return 0.0
        now, settings = self.now(), self.settings
        for key, prefix in ((keys.exact, False), (keys.prefix, True)):
            was_flagged = self.store.get(key).flagged(now)
            change = functools.partial(
                observe, observation=observation, now=now, settings=settings, prefix=prefix
            )
            state = self.store.update(key, change, now)
            if not was_flagged and state.flagged(now):
                self.flags += 1
                # One line per flag, in a fixed shape that fail2ban's filter (contrib/fail2ban) matches;
                # in watch mode a different one, so that nothing acts on a flag the tar pit does not apply.
                log.warning(
                    "%s client=%s key=%s unknown=%d window=%.0fs hold=%.0fs",
                    "watch: would flag as harvester" if settings.watch else "harvest flag",
                    keys.exact.removeprefix("ip:"),
                    key,
                    len(state.unknowns),
                    settings.harvest_window,
                    settings.harvest_hold_for,
                )
        return max(weight(observation, settings), 0.0)

    def decide(
        self, keys: ClientKeys | None, facts: SessionFacts, reply: Reply
    ) -> tuple[Reply, Pass | Delay | Disconnect]:
        decision = decide(self.view(keys), facts, reply, self.now(), self.settings)
        kind = _KINDS[type(decision)]
        self.decisions[kind] = self.decisions.get(kind, 0) + 1
        if self.settings.watch and decision is not PASS:
            log.info("watch: would %s for %s: %s", _describe(decision), facts.client, reply.code)
            return reply, PASS
        if isinstance(decision, Replace):
            return decision.reply, decision.then
        if isinstance(decision, Disconnect):
            if self.stats is not None:
                over = self.settings.hard_error_limit and facts.errors >= self.settings.hard_error_limit
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
