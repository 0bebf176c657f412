"""Fixtures for the store tests: real Redis servers (one per session, emptied before each test) and a
``backend`` that opens stores of one kind (memory, sqlite, redis, sentinel, cluster) and reaches under
them (raw writes, which keys physically exist) the way an operator with sqlite3 or redis-cli could."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state.base import ClientStore
from smtp_tarpit.state.memory import MemoryClientStore
from smtp_tarpit.state.redis import RedisStore
from smtp_tarpit.state.sqlite import SqliteStore
from tests.state.redis_server import (
    HOST,
    SERVICE,
    RedisProcess,
    client,
    require_redis,
    start_cluster,
    start_redis,
    start_sentinel,
)

PREFIX = "test-tarpit:"
TIMEOUT = 1.0  # generous: these tests are about semantics; test_redis_faults.py is about timeouts
BACKENDS = ["memory", "sqlite", "redis", "sentinel", "cluster"]


@dataclass
class Backend:
    """Opens stores of one kind; every store opened in a test shares one underlying state."""

    name: str
    open: Callable[[PolicySettings], ClientStore]
    write_raw: Callable[[str, bytes], None] | None  # put bytes under a client key, bypassing the codec
    raw_keys: Callable[[], set[str]]  # the client keys physically present, expired or not
    expires_by_itself: bool  # the store deletes expired keys without purge (Redis)
    inspect: redis.Redis | redis.RedisCluster | None = None  # a client of its own, for Redis backends


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    require_redis()
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sentinel_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    require_redis()
    folder = tmp_path_factory.mktemp("sentinel")
    master = start_redis(folder, name="master")
    try:
        sentinel = start_sentinel(folder, master)
    except BaseException:
        master.stop()
        raise
    yield master, sentinel
    sentinel.stop()
    master.stop()


@pytest.fixture(scope="session")
def cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisProcess]]:
    require_redis()
    nodes = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield nodes
    for node in nodes:
        node.stop()


def memory_backend() -> Backend:
    store: MemoryClientStore | None = None

    def open_store(settings: PolicySettings) -> ClientStore:
        # One process, one memory: a second "instance" is the same store.
        nonlocal store
        if store is None:
            store = MemoryClientStore(settings)
        return store

    def raw_keys() -> set[str]:
        return {key for key, _state in store.memory.items()} if store is not None else set()

    return Backend("memory", open_store, None, raw_keys, expires_by_itself=False)


def sqlite_backend(path: Path) -> Backend:
    def write_raw(key: str, data: bytes) -> None:
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("INSERT OR REPLACE INTO client_state VALUES (?, ?, ?)", (key, data, 1e12))

    def raw_keys() -> set[str]:
        if not path.exists():
            return set()
        with contextlib.closing(sqlite3.connect(path)) as db:
            return {row[0] for row in db.execute("SELECT key FROM client_state")}

    return Backend(
        "sqlite", lambda settings: SqliteStore(path, settings, busy_timeout=5.0), write_raw, raw_keys, False
    )


def redis_backend(
    name: str, inspect: redis.Redis | redis.RedisCluster, opener: Callable[..., RedisStore]
) -> Backend:
    def write_raw(key: str, data: bytes) -> None:
        inspect.set(PREFIX + key, data)

    def raw_keys() -> set[str]:
        return {k.decode().removeprefix(PREFIX) for k in inspect.scan_iter(match=PREFIX + "*")}

    return Backend(name, opener, write_raw, raw_keys, expires_by_itself=True, inspect=inspect)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name = request.param
    if name == "memory":
        yield memory_backend()
    elif name == "sqlite":
        yield sqlite_backend(tmp_path / "state.db")
    elif name == "redis":
        server: RedisProcess = request.getfixturevalue("redis_server")
        with client(server.port) as inspect:
            inspect.flushall()
            yield redis_backend(
                name,
                inspect,
                lambda settings: RedisStore.connect(server.url, settings, timeout=TIMEOUT, prefix=PREFIX),
            )
    elif name == "sentinel":
        master, sentinel = request.getfixturevalue("sentinel_servers")
        with client(master.port) as inspect:
            inspect.flushall()
            yield redis_backend(
                name,
                inspect,
                lambda settings: RedisStore.connect_sentinel(
                    [(HOST, sentinel.port)],
                    SERVICE,
                    "redis://ignored/0",
                    settings,
                    timeout=TIMEOUT,
                    prefix=PREFIX,
                ),
            )
    else:
        nodes: list[RedisProcess] = request.getfixturevalue("cluster_nodes")
        inspect_cluster = redis.RedisCluster(host=HOST, port=nodes[0].port, socket_timeout=2.0)
        try:
            for node in nodes:
                with client(node.port) as each:
                    each.flushall()
            yield redis_backend(
                name,
                inspect_cluster,
                lambda settings: RedisStore.connect_cluster(
                    nodes[0].url, settings, timeout=TIMEOUT, prefix=PREFIX
                ),
            )
        finally:
            inspect_cluster.close()
