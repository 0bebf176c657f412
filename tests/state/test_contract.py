"""One contract for every client store (state/base.py), run against each: memory, sqlite, and Redis plain,
behind Sentinel and as a Cluster (real servers, tests/state/redis_server.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from smtp_tarpit.policy.reputation import EMPTY, ClientState, Observation, observe
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state.base import ClientStore
from tests.state.conftest import Backend

T = TypeVar("T")
SETTINGS = PolicySettings(half_life=3600.0, harvest_threshold=3, harvest_window=3600.0, max_score=100.0)
A, B, C = "ip:192.0.2.7", "net:192.0.2.0/24", "ip:2001:db8::1"
BAD_KEYS = ["", "foo", "ip:", "ip:192.0.2.7 ", "ip:192.0.2.7\n", "test-tarpit:*", "ip:*", "host:example.test"]


def seen(
    observation: Observation, now: float, settings: PolicySettings = SETTINGS
) -> Callable[[ClientState], ClientState]:
    return lambda state: observe(state, observation, now, settings)


def with_stores(
    backend: Backend,
    scenario: Callable[..., Awaitable[T]],
    count: int = 1,
    settings: PolicySettings = SETTINGS,
) -> T:
    """Run ``scenario(*stores)`` in a fresh event loop with ``count`` stores opened on the backend, closed after."""

    async def main() -> T:
        stores = [backend.open(settings) for _ in range(count)]
        try:
            return await scenario(*stores)
        finally:
            for store in stores:
                await store.close()

    return asyncio.run(main())


def test_an_absent_key_loads_as_nothing_and_applies_from_empty(backend: Backend) -> None:
    now = time.time()

    async def scenario(store: ClientStore) -> None:
        assert await store.load([A, B], now) == {}
        given: list[ClientState] = []

        def change(state: ClientState) -> ClientState:
            given.append(state)
            return observe(state, Observation.ERROR, now, SETTINGS)

        state = await store.apply(A, change, now)
        assert given[-1] == EMPTY
        assert state == observe(EMPTY, Observation.ERROR, now, SETTINGS)
        assert await store.load([A, B], now) == {A: state}

    with_stores(backend, scenario)


def test_apply_gives_change_the_current_state_and_reads_back_exactly(backend: Backend) -> None:
    now = time.time()

    async def scenario(store: ClientStore) -> None:
        first = await store.apply(B, seen(Observation.UNKNOWN_RECIPIENT, now), now)
        second = await store.apply(B, seen(Observation.UNKNOWN_RECIPIENT, now + 1), now + 1)
        assert second == observe(first, Observation.UNKNOWN_RECIPIENT, now + 1, SETTINGS)
        assert second.count(Observation.UNKNOWN_RECIPIENT) == 2
        assert second.unknowns == (now, now + 1)
        assert (await store.load([B], now + 1))[B] == second  # floats survive the trip bit for bit

    with_stores(backend, scenario)


def test_an_apply_that_leaves_the_state_idle_deletes_the_key(backend: Backend) -> None:
    now = time.time()

    async def scenario(store: ClientStore) -> None:
        await store.apply(A, seen(Observation.ERROR, now), now)
        assert await store.apply(A, lambda _state: EMPTY, now) == EMPTY
        assert await store.load([A], now) == {}

    with_stores(backend, scenario)
    assert A not in backend.raw_keys()


def test_put_writes_states_as_they_are_and_deletes_idle_ones(backend: Backend) -> None:
    now = time.time()
    flagged = ClientState(
        score=7.5, at=now, unknowns=(now - 2, now - 1), flagged_until=now + 60, counts=(("error", 3),)
    )

    async def scenario(store: ClientStore) -> None:
        await store.apply(C, seen(Observation.ERROR, now), now)
        await store.put({A: flagged, B: observe(EMPTY, Observation.PROTOCOL, now, SETTINGS), C: EMPTY}, now)
        found = await store.load([A, B, C], now)
        assert found == {A: flagged, B: observe(EMPTY, Observation.PROTOCOL, now, SETTINGS)}
        await store.put({}, now)

    with_stores(backend, scenario)
    assert C not in backend.raw_keys()


def test_forget_deletes_a_key_and_says_whether_it_was_there(backend: Backend) -> None:
    now = time.time()

    async def scenario(store: ClientStore) -> None:
        await store.apply(A, seen(Observation.ERROR, now), now)
        await store.apply(B, seen(Observation.ERROR, now), now)
        assert await store.forget(A) is True
        assert await store.forget(A) is False
        assert await store.load([A, B], now) == {B: observe(EMPTY, Observation.ERROR, now, SETTINGS)}

    with_stores(backend, scenario)


def test_scan_returns_live_states_up_to_the_limit(backend: Backend) -> None:
    now = time.time()
    states = {
        f"ip:198.51.100.{i}": observe(EMPTY, Observation.ERROR, now + i, SETTINGS) for i in range(1, 131)
    }

    async def scenario(store: ClientStore) -> None:
        assert await store.scan(now, 10) == []
        await store.put(states, now)
        some = await store.scan(now, 10)
        assert len(some) == 10 and len({key for key, _ in some}) == 10
        assert all(states[key] == state for key, state in some)
        everything = await store.scan(now, 1000)
        assert dict(everything) == states and len(everything) == len(states)
        assert await store.scan(now, 0) == []

    with_stores(backend, scenario)


def test_expired_states_are_never_returned(backend: Backend) -> None:
    now = time.time()
    later = now + 10 * 365 * 86400  # long after every expiry these settings allow

    async def scenario(store: ClientStore) -> None:
        state = await store.apply(A, seen(Observation.AUTH_FAILURE, now), now)
        assert later > state.expires_at(SETTINGS) > now
        assert await store.load([A], later) == {}
        assert await store.scan(later, 100) == []
        # An apply after expiry starts from a state that is idle by then (EMPTY; the memory store may
        # still hold the expired state until its next purge, which weighs nothing either).
        given: list[ClientState] = []
        await store.apply(A, lambda old: given.append(old) or old, later)
        assert given[0].idle(later, SETTINGS)
        assert await store.load([A], later) == {}

    with_stores(backend, scenario)


def test_a_key_expires_on_its_own_and_purge_removes_what_is_left(backend: Backend) -> None:
    # Reputation off, one unknown recipient in a 0.3 s window: the state lives 0.3 s.
    short = PolicySettings(harvest_threshold=3, harvest_window=0.3)

    async def scenario(store: ClientStore) -> None:
        now = time.time()
        state = await store.apply(A, seen(Observation.UNKNOWN_RECIPIENT, now, short), now)
        assert state.expires_at(short) == pytest.approx(now + 0.3)
        assert await store.load([A], time.time()) == {A: state}
        await asyncio.sleep(0.6)
        assert await store.load([A], time.time()) == {}
        if backend.expires_by_itself:
            assert A not in backend.raw_keys()  # gone from the server, nobody purged it
            assert await store.purge(time.time()) == 0
        else:
            assert await store.purge(time.time()) == 1
        assert A not in backend.raw_keys()

    with_stores(backend, scenario, settings=short)


def test_expiry_follows_the_settings_in_force(backend: Backend) -> None:
    now = time.time()
    state = observe(EMPTY, Observation.UNKNOWN_RECIPIENT, now, SETTINGS)

    async def scenario(store: ClientStore) -> None:
        await store.put({A: state}, now)
        store.settings = PolicySettings(harvest_threshold=3, harvest_window=10.0)  # as after a reload
        assert await store.load([A], now + 5) == {A: state}
        assert await store.load([A], now + 11) == {}

    with_stores(backend, scenario)


def test_concurrent_applies_from_two_stores_on_one_key_all_count(backend: Backend) -> None:
    rounds, parallel = 5, 20
    now = time.time()

    async def scenario(first: ClientStore, second: ClientStore) -> None:
        for _ in range(rounds):
            await asyncio.gather(
                *(
                    store.apply(B, seen(Observation.ERROR, now), now)
                    for store in (first, second)
                    for _ in range(parallel)
                )
            )
        for store in (first, second):
            assert (await store.load([B], now))[B].count(Observation.ERROR) == 2 * rounds * parallel

    with_stores(backend, scenario, count=2)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_that_are_not_client_keys_are_refused(backend: Backend, key: str) -> None:
    now = time.time()

    async def scenario(store: ClientStore) -> None:
        with pytest.raises(ValueError, match="not a client key"):
            await store.load([A, key], now)
        with pytest.raises(ValueError, match="not a client key"):
            await store.apply(key, seen(Observation.ERROR, now), now)
        with pytest.raises(ValueError, match="not a client key"):
            await store.put({key: observe(EMPTY, Observation.ERROR, now, SETTINGS)}, now)
        with pytest.raises(ValueError, match="not a client key"):
            await store.forget(key)

    with_stores(backend, scenario)
    assert backend.raw_keys() == set()


MALFORMED = [
    b"",
    b"not json",
    b"\xff\xfe\x00garbage",
    b"[]",
    b'{"v":1}',
    b'{"v":2,"s":1.0,"a":1.0,"u":[],"f":0.0,"c":{}}',
    b'{"v":1,"s":NaN,"a":1.0,"u":[],"f":0.0,"c":{}}',
    b'{"v":1,"s":1e400,"a":1.0,"u":[],"f":0.0,"c":{}}',
    b'{"v":1,"s":1e5,"a":1.0,"u":[],"f":0.0,"c":{}}',
    b'{"v":1,"s":1.0,"a":-1.0,"u":[],"f":0.0,"c":{}}',
    b'{"v":1,"s":1.0,"a":1.0,"u":["x"],"f":0.0,"c":{}}',
    b'{"v":1,"s":1.0,"a":1.0,"u":[],"f":0.0,"c":{"bogus":1}}',
    b'{"v":1,"s":1.0,"a":1.0,"u":[],"f":0.0,"c":{"error":-1}}',
    b"[" * 100_000,
]


def test_malformed_records_read_back_as_absent(backend: Backend) -> None:
    if backend.write_raw is None:
        pytest.skip("the memory store holds states, not records")
    now = time.time()
    write_raw = backend.write_raw
    keys = [f"ip:203.0.113.{i}" for i in range(len(MALFORMED))]

    async def scenario(store: ClientStore) -> None:
        for key, record in zip(keys, MALFORMED, strict=True):  # with the store open (the table exists)
            write_raw(key, record)
        assert await store.load(keys, now) == {}
        assert await store.scan(now, 1000) == []
        # The next apply starts from EMPTY and replaces the record.
        state = await store.apply(keys[0], seen(Observation.ERROR, now), now)
        assert state == observe(EMPTY, Observation.ERROR, now, SETTINGS)
        assert await store.load(keys, now) == {keys[0]: state}

    with_stores(backend, scenario)
