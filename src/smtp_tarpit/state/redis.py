"""The Redis client store (``[reputation] store = "redis://host:port/db"``): several MX hosts share one view.

One Redis string per client key, named ``prefix + key``, holding the state encoded by state/codec.py, with
a PX expiry at the state's ``expires_at``: Redis forgets a client on its own, so ``purge`` has nothing to do.
Plain Redis, Sentinel (``redis_sentinels``) and Cluster (``redis_cluster``) are the same code: every
operation touches single keys (MGET on a cluster is split by slot), so nothing needs two keys in one slot.

Invariants:
- ``apply`` is an atomic read-modify-write without locks on the server: read the value, run ``change``
  here (the policy stays the one source of truth), then a Lua compare-and-set writes the new value only
  if the key still holds exactly what was read; otherwise the script returns what is there now and we try
  again with that, at most ``attempts`` times, then StoreError. Applies to one key from this process queue
  behind a local per-key lock, so the only races left are between hosts.
- No call waits longer than the configured timeout for one reply, and none is retried by redis-py:
  ``socket_timeout`` and ``socket_connect_timeout`` are set, and ``Retry(NoBackoff(), 0)`` replaces
  redis-py's default of three retries with backoff (a refused connection fails at once, a hung server
  after one timeout). Retrying is the caller's business (state/guard.py).
- Behind Sentinel, the master's address is asked again every ``WATCH_INTERVAL`` seconds in the background,
  so after a failover this host stops writing to the old master within about that time (Sentinel itself
  demotes a reachable old master only ~10 s later; until then it takes writes that are then lost).
- Every redis-py error becomes StoreError with a short reason; a value that does not decode, or a key of
  another type, counts as absent (and is overwritten by the next apply or put).
- Keys are checked with ``check_key`` before they are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from smtp_tarpit.policy.reputation import EMPTY, ClientState
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state import codec
from smtp_tarpit.state.base import Change, StoreError, check_key

log = logging.getLogger("smtp_tarpit.store")

ATTEMPTS = 8
WATCH_INTERVAL = 1.0  # seconds between two questions to the sentinels: who is the master now?
MAX_CONNECTIONS = 64  # per host to one Redis; a session waits (within the timeout) for a free one
_SCAN_BATCH = 100

# KEYS[1] the key; ARGV[1] the value read ('' = absent), ARGV[2] the new value ('' = delete), ARGV[3] the
# milliseconds it lives. pcall: a key of another type reads as absent, like a malformed value.
CAS_SCRIPT = """
local current = redis.pcall('GET', KEYS[1])
if type(current) ~= 'string' then current = '' end
if current ~= ARGV[1] then return {0, current} end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return {1, ''}
"""

# What may appear in a store URL besides the address: credentials and the database. Timeouts come from
# [reputation] store_timeout, so a URL cannot quietly lengthen them.
_URL_OPTIONS = frozenset({"username", "password", "connection_class", "host", "port", "db", "path"})


def no_retry() -> Retry:
    """redis-py's policy for 'try once': its default Redis client retries 3 times with backoff."""
    return Retry(NoBackoff(), 0)


def url_options(url: str) -> dict[str, Any]:
    """The connection options in a redis://, rediss:// or unix:// URL; ValueError if it has others."""
    options: dict[str, Any] = dict(parse_url(url))
    extra = sorted(set(options) - _URL_OPTIONS)
    if extra:
        raise ValueError(f"unsupported option(s) in the store URL: {', '.join(extra)}")
    path = url.partition("?")[0].partition("://")[2].partition("/")[2]
    if url.startswith(("redis://", "rediss://")) and path and not path.isdigit():
        raise ValueError(f"the database in the store URL is not a number: {path!r}")
    return options


class RedisStore:
    def __init__(
        self,
        client: Redis | RedisCluster,
        settings: PolicySettings,
        *,
        prefix: str = "smtp-tarpit:",
        attempts: int = ATTEMPTS,
        also_close: Sequence[Redis] = (),
        watch_interval: float = WATCH_INTERVAL,
    ) -> None:
        """A store over ``client`` (built by one of the ``connect_*`` class methods, which set the
        timeouts and turn retries off). ``also_close``: clients the store owns besides (Sentinel's)."""
        self.client = client
        self.settings = settings
        self.prefix = prefix
        self.attempts = attempts
        self._cluster = isinstance(client, RedisCluster)
        self._also_close = list(also_close)
        pool = client.connection_pool if isinstance(client, Redis) else None
        self._sentinel_pool = pool if isinstance(pool, SentinelConnectionPool) else None
        self._watch_interval = watch_interval
        self._watch: asyncio.Task[None] | None = None
        self._locks = _KeyLocks()
        self._sha = ""
        self.conflicts = 0  # compare-and-set attempts lost to another writer (for metrics and tests)

    # --- construction ---------------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        url: str,
        settings: PolicySettings,
        *,
        timeout: float,
        prefix: str = "smtp-tarpit:",
        max_connections: int = MAX_CONNECTIONS,
    ) -> RedisStore:
        """Plain Redis at a redis://, rediss:// or unix:// URL. Nothing connects until the first call."""
        options = url_options(url)
        pool = BlockingConnectionPool(
            max_connections=max_connections,
            timeout=timeout,  # waiting for a free connection counts against the same limit
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=no_retry(),
            **options,
        )
        return cls(Redis.from_pool(pool), settings, prefix=prefix)

    @classmethod
    def connect_sentinel(
        cls,
        sentinels: Sequence[tuple[str, int]],
        service: str,
        url: str,
        settings: PolicySettings,
        *,
        timeout: float,
        prefix: str = "smtp-tarpit:",
    ) -> RedisStore:
        """The master that ``sentinels`` name for ``service``; credentials, database and TLS come from
        ``url`` (its host is not used). Each sentinel asked costs at most one timeout."""
        options = {k: v for k, v in url_options(url).items() if k in ("username", "password", "db")}
        if url.startswith("rediss://"):
            options["ssl"] = True
        limits: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": no_retry(),
        }
        # sentinel_kwargs: the clients that ask the sentinels get the same limits (else redis-py's defaults).
        sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves Sentinel untyped
            list(sentinels), sentinel_kwargs=dict(limits), **limits, **options
        )
        master = sentinel.master_for(service)
        return cls(master, settings, prefix=prefix, also_close=sentinel.sentinels)

    @classmethod
    def connect_cluster(
        cls, url: str, settings: PolicySettings, *, timeout: float, prefix: str = "smtp-tarpit:"
    ) -> RedisStore:
        """A Redis Cluster found from the node at ``url`` (redis:// or rediss://, database 0)."""
        options = url_options(url)
        if options.get("connection_class") is UnixDomainSocketConnection:
            raise ValueError("a Redis Cluster is reached over TCP (redis:// or rediss://), not unix://")
        if options.pop("db", 0) != 0:
            raise ValueError("a Redis Cluster has only database 0")
        ssl = options.pop("connection_class", None) is SSLConnection
        client = RedisCluster(
            **options,
            ssl=ssl,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=no_retry(),
        )
        return cls(client, settings, prefix=prefix)

    # --- the ClientStore interface ------------------------------------------------------------------

    async def load(self, keys: Sequence[str], now: float) -> dict[str, ClientState]:
        names = [self._name(key) for key in keys]
        if not names:
            return {}
        with _errors("load"):
            values = await self._mget(names)
        settings, found = self.settings, {}
        for key, value in zip(keys, values, strict=True):
            state = self._state(key, value, now, settings)
            if state is not EMPTY:
                found[key] = state
        return found

    async def apply(self, key: str, change: Change, now: float) -> ClientState:
        name = self._name(key)
        settings = self.settings
        async with self._locks.hold(name):
            with _errors("apply"):
                (current,) = await self._mget([name])
                for _ in range(self.attempts):
                    state = change(self._state(key, current, now, settings))
                    value, ttl = self._record(state, now, settings)
                    done, current = await self._compare_and_set(name, current or b"", value, ttl)
                    if done:
                        return state
                    self.conflicts += 1
        raise StoreError(f"redis apply: {key} kept changing ({self.attempts} attempts)")

    async def put(self, states: Mapping[str, ClientState], now: float) -> None:
        if not states:
            return
        settings = self.settings
        records = [(self._name(key), *self._record(state, now, settings)) for key, state in states.items()]
        # Not a transaction: each key is written on its own (a cluster spreads them over nodes).
        pipe = self.client.pipeline() if self._cluster else self.client.pipeline(transaction=False)
        for name, value, ttl in records:
            if value:
                pipe.set(name, value, px=ttl)
            else:
                pipe.delete(name)
        with _errors("put"):
            await pipe.execute()

    async def forget(self, key: str) -> bool:
        name = self._name(key)
        with _errors("forget"):
            deleted = await self.client.delete(name)
        return bool(deleted)

    async def scan(self, now: float, limit: int) -> list[tuple[str, ClientState]]:
        found: list[tuple[str, ClientState]] = []
        if limit <= 0:
            return found
        self._start_watching()
        settings, seen = self.settings, set()
        pattern = _glob_escape(self.prefix) + "*"
        with _errors("scan"):
            scan = cast(AsyncGenerator[bytes, None], self.client.scan_iter(match=pattern, count=_SCAN_BATCH))
            async with contextlib.aclosing(scan) as names:
                batch: list[bytes] = []
                async for name in names:
                    if name in seen:  # SCAN may return a key more than once
                        continue
                    seen.add(name)
                    batch.append(name)
                    if len(batch) >= _SCAN_BATCH:
                        found.extend(await self._live(batch, now, settings))
                        batch = []
                        if len(found) >= limit:
                            break
                if batch and len(found) < limit:
                    found.extend(await self._live(batch, now, settings))
        return found[:limit]

    async def purge(self, now: float) -> int:
        return 0  # every key carries its own expiry: Redis deletes it

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        clients: list[Redis | RedisCluster] = [self.client, *self._also_close]
        for client in clients:
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                await client.aclose()

    # --- helpers --------------------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        self._start_watching()
        return self.prefix + check_key(key)

    def _start_watching(self) -> None:
        """Behind Sentinel: start the background check of the master's address (once, from the loop)."""
        if self._sentinel_pool is not None and self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_master(self._sentinel_pool))

    async def _watch_master(self, pool: SentinelConnectionPool) -> None:
        # get_master_address asks the sentinels and, when the master has changed, closes the idle
        # connections to the old one; new connections go to the new master. A failure here changes nothing:
        # the calls themselves report a store that cannot be reached.
        while True:
            await asyncio.sleep(self._watch_interval)
            with contextlib.suppress(RedisError, OSError):
                await pool.get_master_address()  # type: ignore[no-untyped-call]

    async def _mget(self, names: list[str]) -> list[bytes | None]:
        if isinstance(self.client, RedisCluster):
            values = await self.client.mget_nonatomic(names)
        else:
            values = await self.client.mget(names)
        return list(values)

    async def _compare_and_set(
        self, name: str, expected: bytes, value: bytes, ttl: int
    ) -> tuple[bool, bytes]:
        """(True, b"") when written; (False, what the key holds now, b"" if nothing) when not."""
        # redis-py types these as "awaitable or not" (one signature for its sync and async clients).
        args = (name, expected, value, ttl)
        reply: Any
        if self._sha:
            try:
                reply = await cast(Awaitable[Any], self.client.evalsha(self._sha, 1, *args))
            except NoScriptError:  # a restarted or failed-over server: EVAL loads it again
                reply = await cast(Awaitable[Any], self.client.eval(CAS_SCRIPT, 1, *args))
        else:
            # EVAL caches the script on the server it ran on; EVALSHA from then on sends 40 octets.
            reply = await cast(Awaitable[Any], self.client.eval(CAS_SCRIPT, 1, *args))
            self._sha = _sha1(CAS_SCRIPT)
        if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[1], bytes):
            raise StoreError(f"redis apply: unexpected reply from the script: {reply!r:.100}")
        return reply[0] == 1, reply[1]

    @staticmethod
    def _record(state: ClientState, now: float, settings: PolicySettings) -> tuple[bytes, int]:
        """The value to write and its milliseconds to live; b"" for an idle state (delete it)."""
        if state.idle(now, settings):
            return b"", 0
        return codec.encode(state), max(1, math.ceil((state.expires_at(settings) - now) * 1000))

    def _state(self, key: str, value: object, now: float, settings: PolicySettings) -> ClientState:
        """The live state in ``value``, or EMPTY if there is none (absent, expired or malformed)."""
        if value is None or value == b"":
            return EMPTY
        try:
            if not isinstance(value, bytes):
                raise ValueError(f"value is {type(value).__name__}")
            state = codec.decode(value, settings)
        except ValueError as exc:
            log.debug("redis store: skipping the record of %r: %s", key, exc)
            return EMPTY
        return EMPTY if state.idle(now, settings) else state

    async def _live(
        self, names: list[bytes], now: float, settings: PolicySettings
    ) -> list[tuple[str, ClientState]]:
        keys = [_key_of(name, self.prefix) for name in names]
        wanted = [(name, key) for name, key in zip(names, keys, strict=True) if key is not None]
        if not wanted:
            return []
        values = await self._mget([name.decode() for name, _key in wanted])
        live = []
        for (_name, key), value in zip(wanted, values, strict=True):
            state = self._state(key, value, now, settings)
            if state is not EMPTY:
                live.append((key, state))
        return live


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """Any redis-py failure as StoreError with a short reason (never the URL: it may hold a password)."""
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise StoreError(f"redis {what}: {type(exc).__name__}: {reason[:200]}") from exc


def _key_of(name: bytes, prefix: str) -> str | None:
    """The client key in a Redis key name of ours, or None if it is not one."""
    try:
        text = name.decode()
        return check_key(text.removeprefix(prefix)) if text.startswith(prefix) else None
    except ValueError:  # UnicodeDecodeError included
        return None


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _sha1(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # Redis names scripts by their SHA-1


@dataclass
class _Waiting:
    lock: asyncio.Lock
    users: int = 0


class _KeyLocks:
    """One asyncio.Lock per key while anyone holds or waits for it; the dict never outgrows that."""

    def __init__(self) -> None:
        self._locks: dict[str, _Waiting] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _Waiting(asyncio.Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]
