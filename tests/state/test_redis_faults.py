"""A Redis store that cannot be reached, or hangs, costs one call at most one timeout and no retries; and
once the server is back, the next call works. Real redis-server processes, stopped with SIGSTOP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from smtp_tarpit.config import ReputationConfig
from smtp_tarpit.policy.reputation import EMPTY, Observation, observe
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state.base import Change, StoreError
from smtp_tarpit.state.codec import decode
from smtp_tarpit.state.open import open_store
from smtp_tarpit.state.redis import WATCH_INTERVAL, RedisStore
from tests.state.redis_server import (
    HOST,
    SERVICE,
    RedisProcess,
    client,
    free_port,
    require_redis,
    start_cluster,
    start_redis,
    start_sentinel,
)

TIMEOUT = 0.25  # the config's default store_timeout
SLACK = 0.2  # event loop, process scheduling and a 2-core machine under a test run
SETTINGS = PolicySettings(half_life=600.0)
KEY = "ip:192.0.2.7"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    require_redis()
    process = start_redis(tmp_path)
    yield process
    process.stop()


def store_at(url: str) -> RedisStore:
    store = open_store(ReputationConfig(store=url, store_timeout=TIMEOUT), SETTINGS)
    assert isinstance(store, RedisStore)
    return store


def error(now: float) -> Change:
    return lambda state: observe(state, Observation.ERROR, now, SETTINGS)


async def timed_failure(call: Awaitable[object]) -> float:
    started = time.monotonic()
    with pytest.raises(StoreError):
        await call
    return time.monotonic() - started


def test_a_refused_connection_fails_at_once_without_retries() -> None:
    url = f"redis://{HOST}:{free_port()}/0"  # nothing listens there

    async def scenario() -> list[float]:
        store = store_at(url)
        now = time.time()
        try:
            return [
                await timed_failure(store.apply(KEY, error(now), now)),
                await timed_failure(store.load([KEY], now)),
                await timed_failure(store.put({KEY: observe(EMPTY, Observation.ERROR, now, SETTINGS)}, now)),
                await timed_failure(store.forget(KEY)),
                await timed_failure(store.scan(now, 10)),
            ]
        finally:
            await store.close()

    # redis-py's default retry policy (3 retries, backoff from 1 s) would take seconds here.
    assert max(asyncio.run(scenario())) < TIMEOUT


def test_a_hung_server_fails_one_call_after_one_timeout_and_works_again_when_it_resumes(
    server: RedisProcess,
) -> None:
    async def scenario() -> None:
        store, fresh = store_at(server.url), store_at(server.url)
        try:
            now = time.time()
            await store.apply(KEY, error(now), now)  # a pooled connection exists before the server hangs
            server.pause()
            try:
                # On the open connection: the reply never comes.
                elapsed = await timed_failure(store.apply(KEY, error(now), now))
                assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + SLACK
                elapsed = await timed_failure(store.load([KEY], now))
                assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + SLACK
                # A new connection: the kernel accepts it for the stopped server; the handshake times out.
                elapsed = await timed_failure(fresh.load([KEY], now))
                assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + SLACK
            finally:
                server.resume()
            later = time.time()
            state = await store.apply(KEY, error(later), later)
            assert (
                state.count(Observation.ERROR) >= 2
            )  # the first apply and this one (the cut one may have landed)
            assert (await fresh.load([KEY], later))[KEY] == state
        finally:
            await store.close()
            await fresh.close()

    asyncio.run(scenario())


def test_a_hung_sentinel_master_fails_after_one_timeout(tmp_path: Path) -> None:
    require_redis()
    master = start_redis(tmp_path, name="master")
    try:
        sentinel = start_sentinel(tmp_path, master)
    except BaseException:
        master.stop()
        raise
    config = ReputationConfig(
        store="redis://ignored/0",
        store_timeout=TIMEOUT,
        redis_sentinels=[f"{HOST}:{sentinel.port}"],
        redis_sentinel_master=SERVICE,
    )

    async def scenario() -> None:
        store = open_store(config, SETTINGS)
        assert isinstance(store, RedisStore)
        try:
            now = time.time()
            await store.apply(KEY, error(now), now)
            master.pause()
            try:
                elapsed = await timed_failure(store.load([KEY], now))
                assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + SLACK
            finally:
                master.resume()
            assert (await store.load([KEY], time.time()))[KEY].count(Observation.ERROR) == 1
        finally:
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        sentinel.stop()
        master.stop()


def test_after_a_sentinel_failover_the_store_follows_the_new_master(tmp_path: Path) -> None:
    require_redis()
    master = start_redis(tmp_path, "--repl-diskless-sync-delay", "0", name="master")
    started = [master]
    try:
        replica = start_redis(tmp_path, "--replicaof", HOST, str(master.port), name="replica")
        started.append(replica)
        sentinel = start_sentinel(tmp_path, master)
        started.append(sentinel)
        asyncio.run(_fail_over(master, replica, sentinel))
    finally:
        for process in reversed(started):
            process.stop()


async def _fail_over(master: RedisProcess, replica: RedisProcess, sentinel: RedisProcess) -> None:
    config = ReputationConfig(
        store="redis://ignored/0", store_timeout=TIMEOUT, redis_sentinels=[f"{HOST}:{sentinel.port}"]
    )
    store = open_store(config, SETTINGS)
    assert isinstance(store, RedisStore)
    ask = client(sentinel.port)
    try:
        now = time.time()
        await store.apply(KEY, error(now), now)
        with client(replica.port) as copy:  # the replica has it before the failover (it may lag ~1 s)
            assert _within(10.0, lambda: copy.exists("smtp-tarpit:" + KEY) == 1)
        # The sentinel needs a moment to learn about the replica before it can promote it.
        assert _within(10.0, lambda: _accepted(ask))
        assert _within(
            10.0,
            lambda: (
                int(ask.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1]) == replica.port
            ),
        )
        # Within the store's watch interval it asks the sentinels again and leaves the old master, which
        # still takes writes (Sentinel demotes it ~10 s later, and whatever it took then is lost).
        await asyncio.sleep(WATCH_INTERVAL + 0.5)
        state = await store.apply(KEY, error(now), now)
        assert state.count(Observation.ERROR) == 2
        with client(replica.port) as new:
            assert decode(new.get("smtp-tarpit:" + KEY), SETTINGS) == state  # on the new master
    finally:
        ask.close()
        await store.close()


def _accepted(sentinel: redis.Redis) -> bool:
    try:
        return sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE) in (b"OK", "OK", True)
    except redis.ResponseError:  # NOGOODSLAVE until it has seen the replica
        return False


def _within(seconds: float, condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_hung_cluster_node_fails_its_keys_after_one_timeout_and_no_other(tmp_path: Path) -> None:
    require_redis()
    nodes = start_cluster(tmp_path)
    try:
        asyncio.run(_hang_a_node(nodes))
    finally:
        for node in nodes:
            node.stop()


async def _hang_a_node(nodes: list[RedisProcess]) -> None:
    store = open_store(
        ReputationConfig(store=nodes[0].url, store_timeout=TIMEOUT, redis_cluster=True), SETTINGS
    )
    assert isinstance(store, RedisStore) and isinstance(store.client, RedisCluster)
    cluster = store.client
    try:
        now = time.time()
        keys = [f"ip:198.51.100.{i}" for i in range(1, 40)]
        await store.put({key: observe(EMPTY, Observation.ERROR, now, SETTINGS) for key in keys}, now)
        owner = {key: cluster.get_node_from_key("smtp-tarpit:" + key).port for key in keys}
        victim = nodes[1]
        on_victim = [key for key in keys if owner[key] == victim.port]
        elsewhere = [key for key in keys if owner[key] != victim.port]
        assert on_victim and elsewhere
        victim.pause()
        try:
            elapsed = await timed_failure(store.apply(on_victim[0], error(now), now))
            assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + SLACK
            started = time.monotonic()
            state = await store.apply(elsewhere[0], error(now), now)
            assert state.count(Observation.ERROR) == 2 and time.monotonic() - started < TIMEOUT
        finally:
            victim.resume()
        state = await store.apply(on_victim[0], error(now), now)
        assert state.count(Observation.ERROR) >= 2
        assert set(await store.load(keys, now)) == set(keys)
    finally:
        await store.close()
