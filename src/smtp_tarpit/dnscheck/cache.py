"""A bounded cache of DNS results with per-entry expiry, least recently used entries evicted first.

Owns: storage only. It knows nothing of DNS or of clocks: the caller passes ``now`` to ``get`` and an
absolute ``expires_at`` to ``put``, so tests drive time with plain numbers.

Invariants: never more than ``max_entries`` entries (0 disables caching); an entry is never returned at or
after its ``expires_at``; a read refreshes the entry's recency, a write replaces any older entry for its key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlLruCache(Generic[K, V]):
    """Key -> value with an expiry time each, at most ``max_entries`` of them."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError(f"cache size must be >= 0, got {max_entries}")
        self._max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float) -> V | None:
        """The value stored for ``key`` if it has not expired by ``now``, else None (and drop it)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if now >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, expires_at: float) -> None:
        """Store ``value`` until ``expires_at``, evicting the least recently used entries beyond the bound."""
        if self._max_entries == 0:
            return
        self._entries[key] = (expires_at, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
