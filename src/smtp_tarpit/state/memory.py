"""The in-process client store (``[reputation] store = "memory"``, the default): a bounded dict of states.

Invariants:
- Updates are read-modify-write in one synchronous step on the event loop thread, so they are atomic
  with respect to every session of this process: an unknown recipient seen by one connection is seen by
  the next RCPT of any other connection at once (no race on the harvest flag).
- Memory is bounded: at most ``max_entries`` keys; when full the least recently updated goes.
- Keys are built by ``policy.reputation.keys_for`` from the client address only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

from smtp_tarpit.policy.reputation import EMPTY, ClientState
from smtp_tarpit.policy.settings import PolicySettings


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
