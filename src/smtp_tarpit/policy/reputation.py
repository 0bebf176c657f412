"""Client memory across connections: a decaying score, harvest counting and flags, per client key.

A client is seen at two keys: its exact address (``ip:192.0.2.7``) and its prefix (``net:192.0.2.0/24``,
IPv6 /64 by default). Each key has a ``ClientState``; ``observe`` folds one observation into one state.

Invariants:
- Pure: ``now`` is passed in, states are immutable values, nothing here does I/O or reads a clock.
- A score decays with the configured half-life and is never negative nor above ``max_score``; a state whose
  score has decayed below ``FORGET_BELOW`` with no flag and no recent unknown recipient is ``idle`` and may be
  dropped by a store.
- An unknown recipient counts when it is observed (at its RCPT), never when its delayed reply goes out.
- Keys are built from the client address only, never from anything the client typed.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from dataclasses import dataclass, replace
from functools import lru_cache

from smtp_tarpit.policy.decisions import IPAddress
from smtp_tarpit.policy.settings import PolicySettings

FORGET_BELOW = 0.01
MAX_UNKNOWNS = 1000  # times of unknown recipients kept per key (the harvest threshold is at most this)


class Observation(enum.Enum):
    # Members are singletons compared by identity: hash them so too (Enum's own __hash__ is Python code,
    # and these are dictionary keys on every command).
    __hash__ = object.__hash__

    ERROR = "error"  # a 5xx reply not covered below (relay denied, size, ...)
    UNKNOWN_RECIPIENT = "unknown-recipient"
    PROTOCOL = "protocol"  # syntax, bad sequence, unknown command, over-long line, bare newline
    AUTH_FAILURE = "auth-failure"
    EARLY_TALK = "early-talk"
    DELIVERED = "delivered"  # a message accepted cleanly: lowers the score


@dataclass(frozen=True, slots=True)
class ClientState:
    score: float = 0.0
    at: float = 0.0  # when score was last brought up to date
    unknowns: tuple[float, ...] = ()  # times of recent unknown recipients, within the window
    flagged_until: float = 0.0  # harvest flag
    counts: tuple[tuple[str, int], ...] = ()  # observation -> how many, for "why"

    def score_at(self, now: float, half_life: float) -> float:
        if half_life <= 0 or self.score <= 0:
            return max(self.score, 0.0)
        return self.score * float(0.5 ** (max(now - self.at, 0.0) / half_life))

    def flagged(self, now: float) -> bool:
        return self.flagged_until > now

    def idle(self, now: float, settings: PolicySettings) -> bool:
        return now >= self.expires_at(settings)

    def expires_at(self, settings: PolicySettings) -> float:
        """When this state stops mattering: its flag is over, its unknown recipients are out of the window
        and its score has decayed below ``FORGET_BELOW``. Stores expire keys at this time on their own.

        With reputation off (half_life 0) the score is never read, so it keeps nothing alive.
        """
        until = self.flagged_until
        if self.unknowns:
            until = max(until, max(self.unknowns) + settings.harvest_window)
        if settings.half_life > 0 and self.score >= FORGET_BELOW:
            until = max(until, self.at + settings.half_life * math.log2(self.score / FORGET_BELOW))
        return until

    def count(self, observation: Observation) -> int:
        return dict(self.counts).get(observation.value, 0)


EMPTY = ClientState()


def weight(observation: Observation, settings: PolicySettings) -> float:
    """How much one observation adds to a score (negative for a clean delivery)."""
    return float(getattr(settings.weights, _WEIGHT_FIELDS[observation]))


_WEIGHT_FIELDS = {
    Observation.ERROR: "error",
    Observation.UNKNOWN_RECIPIENT: "unknown_recipient",
    Observation.PROTOCOL: "protocol",
    Observation.AUTH_FAILURE: "auth_failure",
    Observation.EARLY_TALK: "early_talk",
    Observation.DELIVERED: "delivered",
}


def observe(
    state: ClientState,
    observation: Observation,
    now: float,
    settings: PolicySettings,
    *,
    prefix: bool = False,
) -> ClientState:
    """Fold one observation into a key's state (``prefix``: the state of the client's prefix key)."""
    score = state.score_at(now, settings.half_life) + weight(observation, settings)
    counts = dict(state.counts)
    counts[observation.value] = counts.get(observation.value, 0) + 1
    unknowns, flagged_until = state.unknowns, state.flagged_until
    if observation is Observation.UNKNOWN_RECIPIENT and settings.harvest:
        unknowns, flagged_until = _count_unknown(state, now, settings, prefix)
    return replace(
        state,
        score=min(max(score, 0.0), settings.max_score),
        at=now,
        unknowns=unknowns,
        flagged_until=flagged_until,
        counts=tuple(sorted(counts.items())),
    )


def _count_unknown(
    state: ClientState, now: float, settings: PolicySettings, prefix: bool
) -> tuple[tuple[float, ...], float]:
    needed = settings.harvest_threshold
    if prefix:
        # A prefix needs threshold / prefix_weight unknowns: a /24 of bots is seen as one harvester, but
        # one bad host does not flag its neighbours as fast as itself.
        if settings.prefix_weight <= 0:
            return (), state.flagged_until
        needed = min(max(1, round(needed / settings.prefix_weight)), MAX_UNKNOWNS)
    recent = tuple(t for t in state.unknowns if now - t < settings.harvest_window)
    unknowns = (*recent, now)[-needed:]
    flagged_until = state.flagged_until
    if len(unknowns) >= needed:
        flagged_until = max(flagged_until, now + settings.harvest_hold_for)
    return unknowns, flagged_until


def merge(a: ClientState, b: ClientState, now: float, settings: PolicySettings) -> ClientState:
    """Two versions of one key's state as one: the worse of each part (score at ``now``, flag), the
    union of recent unknown recipients, the larger of each count. Used when a host kept observing on its
    own while the shared store was away: nothing either side saw is lost, nothing is counted twice.
    Commutative and idempotent."""
    window = settings.harvest_window
    unknowns = tuple(sorted({t for t in (*a.unknowns, *b.unknowns) if now - t < window}))
    counts = dict(a.counts)
    for name, count in b.counts:
        counts[name] = max(counts.get(name, 0), count)
    return ClientState(
        score=max(a.score_at(now, settings.half_life), b.score_at(now, settings.half_life)),
        at=now,
        unknowns=unknowns[-MAX_UNKNOWNS:],
        flagged_until=max(a.flagged_until, b.flagged_until),
        counts=tuple(sorted(counts.items())),
    )


# --- keys -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientKeys:
    exact: str
    prefix: str


@lru_cache(maxsize=4096)  # the same clients come back session after session; address parsing is slow
def keys_for(client: IPAddress, prefix_v4: int = 24, prefix_v6: int = 64) -> ClientKeys:
    length = prefix_v4 if client.version == 4 else prefix_v6
    network = ipaddress.ip_network(f"{client}/{length}", strict=False)
    return ClientKeys(f"ip:{client}", f"net:{network}")


@dataclass(frozen=True, slots=True)
class ClientView:
    """A client as the policy sees it: its exact state and its prefix state together."""

    exact: ClientState = EMPTY
    prefix: ClientState = EMPTY

    def score(self, now: float, settings: PolicySettings, session: float = 0.0) -> float:
        """The client's remembered score, less what ``session`` (this connection) has added itself.

        The larger of its own score and prefix_weight times its prefix's: a bad host is judged by its
        own record, its neighbours by a fraction of the prefix's, a /24 of bots by the prefix's.
        """
        if not settings.reputation:
            return 0.0
        own = self.exact.score_at(now, settings.half_life) - session
        shared = self.prefix.score_at(now, settings.half_life) - session
        return max(own, settings.prefix_weight * shared, 0.0)

    def flagged(self, now: float) -> bool:
        return self.exact.flagged(now) or self.prefix.flagged(now)


UNKNOWN_CLIENT = ClientView()
