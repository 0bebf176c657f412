"""Which shared client store ``[reputation] store`` names, opened: the one place that maps config to a store.

Invariants:
- ``memory`` means no shared store (None): the server keeps its states in its own MemoryStore only.
- Anything that cannot work is a ValueError that names ``[reputation] store`` and says why, raised here
  at startup (or reload), never at the first client. Passwords in a URL are never repeated in a message.
- Every Redis client is built with the configured ``store_timeout`` and no retries (state/redis.py); a
  SQLite file waits at most ``store_timeout`` for another process's lock.
"""

from __future__ import annotations

import re

from smtp_tarpit.config import ReputationConfig
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state.base import ClientStore
from smtp_tarpit.state.redis import RedisStore
from smtp_tarpit.state.sqlite import SqliteStore

_REDIS = ("redis://", "rediss://", "unix://")
_HOST_PORT = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})")


def open_store(config: ReputationConfig, settings: PolicySettings) -> ClientStore | None:
    store = config.store
    if store == "memory":
        return None
    try:
        if store.startswith("sqlite://"):
            return _sqlite(config, settings)
        if store.startswith(_REDIS):
            return _redis(config, settings)
        raise ValueError('expected "memory", "sqlite:///path", "redis://...", "rediss://..." or "unix://..."')
    except ValueError as exc:
        raise ValueError(f"[reputation] store {redact(store)!r}: {exc}") from exc


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    return re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", url)


def _sqlite(config: ReputationConfig, settings: PolicySettings) -> SqliteStore:
    path = config.sqlite_path
    if path is None or not path.name:
        raise ValueError("no database file named (sqlite:///path/state.db)")
    if "?" in str(path):
        raise ValueError("options after '?' are not supported in a sqlite store URL")
    return SqliteStore(path, settings, busy_timeout=config.store_timeout)


def _redis(config: ReputationConfig, settings: PolicySettings) -> RedisStore:
    timeout, prefix = config.store_timeout, config.redis_key_prefix
    if config.redis_sentinels:
        sentinels = [_host_port(sentinel) for sentinel in config.redis_sentinels]
        return RedisStore.connect_sentinel(
            sentinels, config.redis_sentinel_master, config.store, settings, timeout=timeout, prefix=prefix
        )
    if config.redis_cluster:
        return RedisStore.connect_cluster(config.store, settings, timeout=timeout, prefix=prefix)
    return RedisStore.connect(config.store, settings, timeout=timeout, prefix=prefix)


def _host_port(text: str) -> tuple[str, int]:
    match = _HOST_PORT.fullmatch(text)
    if not match:
        raise ValueError(f"redis_sentinels: expected 'host:port' or '[ipv6]:port', got {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port <= 65535:
        raise ValueError(f"redis_sentinels: port out of range in {text!r}")
    return host, port
