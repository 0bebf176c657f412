"""The fail-open guard around a shared store (fake clock), and merging two versions of a client's state."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtp_tarpit.policy.reputation import ClientState, Observation, merge, observe
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state.guard import Guard

SETTINGS = PolicySettings(half_life=600.0, harvest_threshold=3, harvest_window=3600.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _answer(value: int = 7) -> int:
    return value


async def _fail() -> int:
    raise ConnectionError("refused")


async def _hang() -> int:
    await asyncio.sleep(60)
    return 0


def test_a_failure_opens_the_breaker_and_later_calls_try_again(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    guard = Guard("redis://x", timeout=0.05, retry_after=5.0, clock=clock)

    async def run() -> list[int | None]:
        results = [await guard.call("load", _answer), await guard.call("load", _fail)]
        results.append(await guard.call("load", _answer))  # skipped: the breaker is open
        clock.now = 5.1
        results.append(await guard.call("load", _answer))  # tried again, and it answers
        return results

    with caplog.at_level(logging.WARNING, logger="smtp_tarpit.store"):
        assert asyncio.run(run()) == [7, None, None, 7]
    assert (guard.errors, guard.skipped, guard.up) == (1, 1, True)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "failed (load: ConnectionError: refused): using local state" in messages[0]
    assert "answers again" in messages[1]


def test_a_hung_store_costs_one_timeout_then_nothing_while_the_breaker_is_open() -> None:
    clock = Clock()
    guard = Guard("redis://x", timeout=0.1, retry_after=5.0, clock=clock)

    async def run() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await guard.call("apply", _hang) is None
        first = loop.time() - started
        started = loop.time()
        for _ in range(10):
            assert await guard.call("apply", _hang) is None
        return first, loop.time() - started

    first, rest = asyncio.run(run())
    assert 0.09 <= first < 1.0 and rest < 0.05
    assert (guard.errors, guard.skipped) == (1, 10)


def test_one_episode_is_logged_once_however_many_calls_fail(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    guard = Guard("s", timeout=0.05, retry_after=1.0, clock=clock)

    async def run() -> None:
        for step in range(5):
            clock.now = step * 2.0  # past the breaker each time: every call is tried, and fails
            await guard.call("load", _fail)

    with caplog.at_level(logging.WARNING, logger="smtp_tarpit.store"):
        asyncio.run(run())
    assert guard.errors == 5 and len(caplog.records) == 1


times = st.floats(min_value=0, max_value=10_000, allow_nan=False)
observations = st.lists(st.tuples(st.sampled_from(list(Observation)), times), max_size=12)


def _state(history: list[tuple[Observation, float]]) -> ClientState:
    state = ClientState()
    for observation, at in sorted(history, key=lambda item: item[1]):
        state = observe(state, observation, at, SETTINGS)
    return state


@given(observations, observations, st.floats(min_value=10_000, max_value=20_000))
def test_merge_is_commutative_idempotent_and_keeps_the_worse_of_each(
    one: list[tuple[Observation, float]], two: list[tuple[Observation, float]], now: float
) -> None:
    a, b = _state(one), _state(two)
    ab, ba = merge(a, b, now, SETTINGS), merge(b, a, now, SETTINGS)
    assert ab == ba
    assert merge(ab, ab, now, SETTINGS) == ab
    half_life = SETTINGS.half_life
    assert ab.score_at(now, half_life) == pytest.approx(
        max(a.score_at(now, half_life), b.score_at(now, half_life))
    )
    assert ab.flagged_until == max(a.flagged_until, b.flagged_until)
    for observation in Observation:
        assert ab.count(observation) == max(a.count(observation), b.count(observation))
