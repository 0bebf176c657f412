"""The client store interface: where client states live beyond one process (or one restart).

Three implementations, chosen by ``[reputation] store``: ``memory`` (state/memory.py, the default),
``sqlite:///path`` (state/sqlite.py, one host, survives restarts) and ``redis://...`` (state/redis.py,
several MX hosts share one view). One contract suite (tests/state/test_contract.py) runs against all three.

The server never waits on a store to write a reply on its own: it keeps every state it uses in its
in-process ``MemoryStore`` (read synchronously by the policy) and talks to a shared store around it, under a
timeout and a circuit breaker (state/guard.py). This interface is what the shared store offers.

Invariants every implementation keeps (the contract suite checks them):
- ``apply`` is an atomic read-modify-write: two processes applying changes to one key at once both count.
- A key disappears on its own at its state's ``expires_at`` (an idle state is never returned, and is
  deleted rather than written).
- Keys are ``ip:ADDRESS`` or ``net:NETWORK`` (built by ``policy.reputation.keys_for`` from the client
  address only); anything else is refused with ``ValueError`` before it reaches the store.
- A record read back is validated (state/codec.py) before use; a malformed one counts as absent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from smtp_tarpit.policy.reputation import ClientState
from smtp_tarpit.policy.settings import PolicySettings

Change = Callable[[ClientState], ClientState]

# ip:192.0.2.7, ip:2001:db8::1, net:192.0.2.0/24, net:2001:db8::/64. Nothing a client typed ever matches.
_KEY = re.compile(r"(ip|net):[0-9a-fA-F.:]{2,45}(/[0-9]{1,3})?")


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise ValueError(f"not a client key: {key!r}")
    return key


class StoreError(Exception):
    """The store did not answer, or answered nonsense; the caller falls back to local state."""


class ClientStore(Protocol):
    settings: PolicySettings  # replaced on reload; expiry follows the current settings

    async def load(self, keys: Sequence[str], now: float) -> dict[str, ClientState]:
        """The live states of ``keys`` (absent, expired or malformed ones are left out)."""
        ...

    async def apply(self, key: str, change: Change, now: float) -> ClientState:
        """Atomically replace the key's state (EMPTY when absent) with ``change(state)``; return it."""
        ...

    async def put(self, states: Mapping[str, ClientState], now: float) -> None:
        """Write these states as they are (snapshots, and states kept locally during an outage)."""
        ...

    async def forget(self, key: str) -> bool:
        """Delete the key; True if it was there."""
        ...

    async def scan(self, now: float, limit: int) -> list[tuple[str, ClientState]]:
        """Up to ``limit`` live states (restoring a snapshot, the status page)."""
        ...

    async def purge(self, now: float) -> int:
        """Delete expired states the store does not expire by itself; return how many."""
        ...

    async def close(self) -> None: ...
