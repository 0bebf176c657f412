"""What the Redis store does beyond the shared contract: its compare-and-set, its keys and their expiry,
on a plain server and on a Cluster (real servers)."""

from __future__ import annotations

import asyncio
import time

import pytest

from smtp_tarpit.policy.reputation import EMPTY, ClientState, Observation, observe
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state.base import StoreError
from smtp_tarpit.state.codec import encode
from smtp_tarpit.state.redis import ATTEMPTS, RedisStore
from tests.state.conftest import PREFIX, Backend

SETTINGS = PolicySettings(half_life=600.0, harvest_threshold=3)
KEY = "ip:192.0.2.7"
pytestmark = pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)


def run_with(backend: Backend, scenario):  # type: ignore[no-untyped-def]
    async def main() -> None:
        store = backend.open(SETTINGS)
        assert isinstance(store, RedisStore)
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_a_write_between_read_and_compare_and_set_is_not_lost(backend: Backend) -> None:
    now = time.time()
    theirs = ClientState(score=4.0, at=now, counts=(("protocol", 4),))
    inspect = backend.inspect
    assert inspect is not None
    given: list[ClientState] = []

    def change(state: ClientState) -> ClientState:
        if not given:  # another host writes after our read, before our compare-and-set
            inspect.set(PREFIX + KEY, encode(theirs))
        given.append(state)
        return observe(state, Observation.ERROR, now, SETTINGS)

    async def scenario(store: RedisStore) -> None:
        state = await store.apply(KEY, change, now)
        assert given == [EMPTY, theirs]  # the second try starts from what the script returned
        assert state == observe(theirs, Observation.ERROR, now, SETTINGS)
        assert store.conflicts == 1
        assert (await store.load([KEY], now))[KEY] == state

    run_with(backend, scenario)


def test_a_key_that_keeps_changing_fails_after_a_bounded_number_of_attempts(backend: Backend) -> None:
    now = time.time()
    inspect = backend.inspect
    assert inspect is not None
    calls = 0

    def change(state: ClientState) -> ClientState:
        nonlocal calls
        calls += 1
        inspect.set(PREFIX + KEY, encode(ClientState(score=float(calls), at=now)))
        return observe(state, Observation.ERROR, now, SETTINGS)

    async def scenario(store: RedisStore) -> None:
        with pytest.raises(StoreError, match="kept changing"):
            await store.apply(KEY, change, now)
        assert calls == ATTEMPTS
        assert (await store.load([KEY], now))[KEY] == ClientState(score=float(ATTEMPTS), at=now)

    run_with(backend, scenario)


def test_every_key_carries_its_expiry(backend: Backend) -> None:
    now = time.time()
    inspect = backend.inspect
    assert inspect is not None

    async def scenario(store: RedisStore) -> None:
        state = await store.apply(
            KEY, lambda s: observe(s, Observation.UNKNOWN_RECIPIENT, now, SETTINGS), now
        )
        await store.put({"net:192.0.2.0/24": state}, now)
        expected_ms = (state.expires_at(SETTINGS) - now) * 1000
        for key in (KEY, "net:192.0.2.0/24"):
            assert expected_ms - 2000 < inspect.pttl(PREFIX + key) <= expected_ms + 1

    run_with(backend, scenario)


def test_a_key_of_another_type_counts_as_absent_and_is_replaced(backend: Backend) -> None:
    now = time.time()
    inspect = backend.inspect
    assert inspect is not None
    inspect.hset(PREFIX + KEY, "score", "99")

    async def scenario(store: RedisStore) -> None:
        assert await store.load([KEY], now) == {}
        assert await store.scan(now, 10) == []
        state = await store.apply(KEY, lambda s: observe(s, Observation.ERROR, now, SETTINGS), now)
        assert state == observe(EMPTY, Observation.ERROR, now, SETTINGS)
        assert (await store.load([KEY], now))[KEY] == state

    run_with(backend, scenario)


def test_only_keys_under_the_prefix_are_ours(backend: Backend) -> None:
    now = time.time()
    inspect = backend.inspect
    assert inspect is not None
    record = encode(observe(EMPTY, Observation.ERROR, now, SETTINGS))
    inspect.set("other-app:" + KEY, record)
    inspect.set(PREFIX + "not a client key", record)

    async def scenario(store: RedisStore) -> None:
        assert await store.scan(now, 10) == []
        assert await store.forget(KEY) is False
        await store.apply(KEY, lambda s: observe(s, Observation.ERROR, now, SETTINGS), now)
        assert [key for key, _ in await store.scan(now, 10)] == [KEY]

    run_with(backend, scenario)
    assert inspect.get("other-app:" + KEY) == record


def test_the_script_is_loaded_again_after_the_server_forgot_it(backend: Backend) -> None:
    now = time.time()
    inspect = backend.inspect
    assert inspect is not None

    async def scenario(store: RedisStore) -> None:
        await store.apply(KEY, lambda s: observe(s, Observation.ERROR, now, SETTINGS), now)
        inspect.script_flush()  # as after a restart or a failover to a server that never ran it
        state = await store.apply(KEY, lambda s: observe(s, Observation.ERROR, now, SETTINGS), now)
        assert state.count(Observation.ERROR) == 2

    run_with(backend, scenario)
