"""The in-process client store (``[reputation] store = "memory"``, the default): a bounded dict of states.

Invariants:
- Updates are read-modify-write in one synchronous step on the event loop thread, so they are atomic
  with respect to every session of this process: an unknown recipient seen by one connection is seen by
  the next RCPT of any other connection at once (no race on the harvest flag).
- Memory is bounded: at most ``max_entries`` keys; when full the least recently updated goes.
- Keys are built by ``policy.reputation.keys_for`` from the client address only.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence

from smtp_tarpit.policy.reputation import EMPTY, ClientState
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state.base import Change, check_key


class MemoryStore:
    def __init__(self, settings: PolicySettings, max_entries: int = 100_000) -> None:
        self.settings = settings
        self.max_entries = max_entries
        self._states: OrderedDict[str, ClientState] = OrderedDict()
        self.evictions = 0

    def get(self, key: str) -> ClientState:
        return self._states.get(key, EMPTY)

    def update(self, key: str, change: Callable[[ClientState], ClientState], now: float) -> ClientState:
        state = change(self._states.get(key, EMPTY))
        if state.idle(now, self.settings):
            self._states.pop(key, None)
            return state
        self._states[key] = state
        self._states.move_to_end(key)
        if len(self._states) > self.max_entries:
            # The least recently updated goes (idle states are purged every minute by the server, so
            # what is left is live); a full scan here would make every update O(n) at capacity.
            self._states.popitem(last=False)
            self.evictions += 1
        return state

    def forget(self, key: str) -> bool:
        return self._states.pop(key, None) is not None

    def items(self) -> Iterator[tuple[str, ClientState]]:
        return iter(list(self._states.items()))

    def __len__(self) -> int:
        return len(self._states)

    def purge(self, now: float) -> int:
        """Drop every idle state; return how many went. Called periodically."""
        idle = [key for key, state in self._states.items() if state.idle(now, self.settings)]
        for key in idle:
            del self._states[key]
        return len(idle)

    def put(self, key: str, state: ClientState, now: float) -> None:
        """Replace a key's state as it is (a state read from a shared store)."""
        self.update(key, lambda _old: state, now)


class MemoryClientStore:
    """The ``ClientStore`` interface (state/base.py) over a ``MemoryStore``: what ``store = "memory"`` means
    when the interface is asked for (the contract suite; a server with no shared store uses its local
    ``MemoryStore`` directly and never goes through here)."""

    def __init__(self, settings: PolicySettings, max_entries: int = 100_000) -> None:
        self.memory = MemoryStore(settings, max_entries)

    @property
    def settings(self) -> PolicySettings:
        return self.memory.settings

    @settings.setter
    def settings(self, settings: PolicySettings) -> None:
        self.memory.settings = settings

    async def load(self, keys: Sequence[str], now: float) -> dict[str, ClientState]:
        found = {}
        for key in keys:
            state = self.memory.get(check_key(key))
            if state is not EMPTY and not state.idle(now, self.settings):
                found[key] = state
        return found

    async def apply(self, key: str, change: Change, now: float) -> ClientState:
        return self.memory.update(check_key(key), change, now)

    async def put(self, states: Mapping[str, ClientState], now: float) -> None:
        for key, state in states.items():
            self.memory.put(check_key(key), state, now)

    async def forget(self, key: str) -> bool:
        return self.memory.forget(check_key(key))

    async def scan(self, now: float, limit: int) -> list[tuple[str, ClientState]]:
        live = ((key, state) for key, state in self.memory.items() if not state.idle(now, self.settings))
        return list(itertools.islice(live, limit))

    async def purge(self, now: float) -> int:
        return self.memory.purge(now)

    async def close(self) -> None:
        return None
