"""The pure policy, table-driven with a fake clock, and its properties (hypothesis)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_tarpit.policy.decisions import PASS, Delay, Disconnect, Replace, SessionFacts, Stage, delay_of
from smtp_tarpit.policy.engine import decide
from smtp_tarpit.policy.reputation import (
    EMPTY,
    ClientState,
    ClientView,
    Observation,
    keys_for,
    observe,
)
from smtp_tarpit.policy.settings import MAX_ANY_DELAY, PolicySettings
from smtp_tarpit.protocol import replies
from smtp_tarpit.protocol.replies import Reply

CLIENT = ipaddress.ip_address("192.0.2.7")
SEED = PolicySettings(delay=5, auth_failure_delay=5)
ADAPTIVE = PolicySettings(
    delay=5,
    auth_failure_delay=10,
    growth=2,
    max_delay=60,
    hard_error_limit=10,
    harvest_threshold=5,
    harvest_window=3600,
    harvest_hold_for=3600,
    harvest_delay=20,
    half_life=3600,
)
NOW = 1_000_000.0


def facts(stage: Stage = Stage.RCPT, errors: int = 1, **kwargs: object) -> SessionFacts:
    values: dict[str, object] = {"authenticated": False, "exempt": False, "delayed": 0.0}
    values.update(kwargs)
    return SessionFacts(CLIENT, stage=stage, errors=errors, **values)  # type: ignore[arg-type]


def fold(
    observations: list[Observation], s: PolicySettings, start: float = NOW, step: float = 1.0
) -> ClientState:
    state = EMPTY
    for i, observation in enumerate(observations):
        state = observe(state, observation, start + i * step, s)
    return state


@pytest.mark.parametrize(
    ("name", "s", "f", "reply", "expected"),
    [
        ("seed delays an anonymous 550", SEED, facts(), replies.UNKNOWN_USER, Delay(5)),
        ("seed passes a 250", SEED, facts(), replies.RECIPIENT_OK, PASS),
        ("seed passes a 4xx", SEED, facts(), replies.TOO_MANY_RECIPIENTS, PASS),
        ("tar pit off by default", PolicySettings(), facts(), replies.UNKNOWN_USER, PASS),
        ("authenticated never waits", SEED, facts(authenticated=True), replies.UNKNOWN_USER, PASS),
        ("exempt never waits", SEED, facts(exempt=True), replies.UNKNOWN_USER, PASS),
        ("QUIT is never delayed", ADAPTIVE, facts(Stage.QUIT, errors=5), replies.bye("mx"), PASS),
        ("second error waits twice as long", ADAPTIVE, facts(errors=2), replies.UNKNOWN_USER, Delay(10)),
        ("third error four times", ADAPTIVE, facts(errors=3), replies.RELAY_DENIED, Delay(20)),
        ("escalation is capped by max_delay", ADAPTIVE, facts(errors=9), replies.UNKNOWN_USER, Delay(60)),
        (
            "hard limit disconnects",
            ADAPTIVE,
            facts(errors=10),
            replies.UNKNOWN_USER,
            Disconnect(replies.TOO_MANY_ERRORS),
        ),
        (
            "DATA reply capped at 90 s",
            replace(ADAPTIVE, max_delay=240),
            facts(Stage.DATA, errors=8),
            replies.NEED_RCPT,
            Delay(90),
        ),
        (
            "after the dot capped at 60 s",
            replace(ADAPTIVE, max_delay=240),
            facts(Stage.MESSAGE, errors=8),
            replies.BARE_NEWLINE,
            Delay(60),
        ),
        ("AUTH failure has its own delay", ADAPTIVE, facts(Stage.COMMAND), replies.AUTH_FAILED, Delay(10)),
        (
            "budget spent: 421",
            replace(ADAPTIVE, session_budget=30),
            facts(delayed=30),
            replies.UNKNOWN_USER,
            Disconnect(replies.TOO_MANY_ERRORS),
        ),
        (
            "budget limits the last wait",
            replace(ADAPTIVE, session_budget=30),
            facts(errors=3, delayed=25),
            replies.UNKNOWN_USER,
            Delay(5),
        ),
        (
            "early talker gets 554 after a delay",
            SEED,
            facts(Stage.COMMAND, errors=0, early_talker=True),
            replies.OK,
            Replace(replies.EARLY_TALKER, Delay(5)),
        ),
    ],
)
def test_decisions(name: str, s: PolicySettings, f: SessionFacts, reply: Reply, expected: object) -> None:
    assert decide(ClientView(), f, reply, NOW, s) == expected, name


def test_known_bad_client_waits_the_escalated_delay_on_its_first_error() -> None:
    bad = fold([Observation.UNKNOWN_RECIPIENT] * 3, replace(ADAPTIVE, harvest_threshold=0))
    decision = decide(ClientView(exact=bad), facts(errors=1), replies.UNKNOWN_USER, NOW + 3, ADAPTIVE)
    assert delay_of(decision) == pytest.approx(5 * 2**3, rel=0.01)


def test_score_halves_after_one_half_life() -> None:
    state = fold([Observation.ERROR] * 4, ADAPTIVE, step=0)
    assert state.score_at(NOW, ADAPTIVE.half_life) == 4
    assert state.score_at(NOW + 3600, ADAPTIVE.half_life) == pytest.approx(2)


def test_clean_delivery_lowers_the_score() -> None:
    state = fold([Observation.ERROR] * 3 + [Observation.DELIVERED], ADAPTIVE, step=0)
    assert state.score_at(NOW, ADAPTIVE.half_life) == 1


def test_neighbour_in_the_prefix_counts_for_less() -> None:
    s = ADAPTIVE
    prefix = EMPTY
    for i in range(4):
        prefix = observe(prefix, Observation.ERROR, NOW + i, s, prefix=True)
    neighbour = ClientView(prefix=prefix)
    assert neighbour.score(NOW + 4, s) == pytest.approx(0.5 * prefix.score_at(NOW + 4, s.half_life))


def test_keys_are_the_exact_address_and_its_prefix() -> None:
    keys = keys_for(ipaddress.ip_address("192.0.2.77"))
    assert (keys.exact, keys.prefix) == ("ip:192.0.2.77", "net:192.0.2.0/24")
    keys6 = keys_for(ipaddress.ip_address("2001:db8:1:2:3::4"))
    assert keys6.prefix == "net:2001:db8:1:2::/64"


def test_threshold_unknowns_within_the_window_flag_the_client() -> None:
    four = fold([Observation.UNKNOWN_RECIPIENT] * 4, ADAPTIVE)
    assert not four.flagged(NOW + 4)
    five = observe(four, Observation.UNKNOWN_RECIPIENT, NOW + 4, ADAPTIVE)
    assert five.flagged(NOW + 5) and not five.flagged(NOW + 4 + 3600)


def test_unknowns_spread_beyond_the_window_do_not_flag() -> None:
    slow = fold([Observation.UNKNOWN_RECIPIENT] * 20, ADAPTIVE, step=1000)
    assert not slow.flagged(NOW + 20_000)


def test_prefix_needs_more_unknowns_to_be_flagged() -> None:
    state = EMPTY
    for i in range(9):
        state = observe(state, Observation.UNKNOWN_RECIPIENT, NOW + i, ADAPTIVE, prefix=True)
    assert not state.flagged(NOW + 9)
    state = observe(state, Observation.UNKNOWN_RECIPIENT, NOW + 9, ADAPTIVE, prefix=True)
    assert state.flagged(NOW + 10)


FLAGGED = ClientView(exact=ClientState(flagged_until=NOW + 100))


def test_flagged_client_gets_450_for_valid_and_unknown_alike() -> None:
    valid = decide(FLAGGED, facts(errors=0), replies.RECIPIENT_OK, NOW, ADAPTIVE)
    unknown = decide(FLAGGED, facts(errors=1), replies.UNKNOWN_USER, NOW, ADAPTIVE)
    assert valid == unknown == Replace(replies.TRY_AGAIN_LATER, Delay(20))


def test_accept_then_defer_answers_250_then_451_at_data() -> None:
    s = replace(ADAPTIVE, harvest_action="accept-then-defer")
    assert decide(FLAGGED, facts(), replies.UNKNOWN_USER, NOW, s) == Replace(replies.RECIPIENT_OK, Delay(20))
    assert decide(FLAGGED, facts(Stage.DATA, errors=0), replies.START_DATA, NOW, s) == Replace(
        replies.DEFER_MESSAGE, Delay(20)
    )


# --- properties ---------------------------------------------------------------------------------------------

observations = st.lists(st.sampled_from(list(Observation)), max_size=40)
policy_settings = st.builds(
    PolicySettings,
    delay=st.floats(0, 240),
    auth_failure_delay=st.floats(0, 240),
    growth=st.floats(1, 10),
    max_delay=st.floats(0, 240),
    session_budget=st.floats(1, 3600),
    hard_error_limit=st.integers(0, 50),
    harvest_threshold=st.integers(0, 20),
    harvest_delay=st.floats(0, 240),
    half_life=st.floats(0, 86400),
    stutter=st.booleans(),
)
any_reply = st.sampled_from([v for v in vars(replies).values() if isinstance(v, Reply)])
stages = st.sampled_from(list(Stage))


@settings(max_examples=300, deadline=None)
@given(
    policy_settings, observations, any_reply, stages, st.integers(0, 60), st.floats(0, 3600), st.booleans()
)
def test_exempt_and_authenticated_are_never_delayed_and_every_delay_is_within_caps(
    s: PolicySettings,
    seen: list[Observation],
    reply: Reply,
    stage: Stage,
    errors: int,
    delayed: float,
    trusted: bool,
) -> None:
    view = ClientView(exact=fold(seen, s))
    f = facts(stage, errors, delayed=delayed, exempt=trusted)
    decision = decide(view, f, reply, NOW + len(seen), s)
    if trusted:
        assert decision is PASS
    seconds = delay_of(decision)
    assert 0 <= seconds <= MAX_ANY_DELAY
    assert seconds <= {Stage.DATA: 90, Stage.MESSAGE: 60}.get(stage, MAX_ANY_DELAY)
    if stage is Stage.QUIT:
        assert decision is PASS


@settings(max_examples=200, deadline=None)
@given(policy_settings, observations, st.integers(0, 60), st.floats(0, 3600))
def test_a_flagged_harvester_learns_nothing_from_the_answer(
    s: PolicySettings, seen: list[Observation], errors: int, delayed: float
) -> None:
    s = replace(s, harvest_threshold=max(s.harvest_threshold, 1))
    view = ClientView(exact=replace(fold(seen, s), flagged_until=NOW + 10_000))
    valid = decide(view, facts(Stage.RCPT, errors, delayed=delayed), replies.RECIPIENT_OK, NOW + 100, s)
    unknown = decide(view, facts(Stage.RCPT, errors + 1, delayed=delayed), replies.UNKNOWN_USER, NOW + 100, s)
    assert valid == unknown


@settings(max_examples=200, deadline=None)
@given(policy_settings, observations)
def test_decay_brings_every_score_back_to_zero(s: PolicySettings, seen: list[Observation]) -> None:
    s = replace(s, half_life=max(s.half_life, 1.0))
    state = fold(seen, s)
    later = NOW + len(seen) + 40 * s.half_life + s.harvest_window + s.harvest_hold_for
    assert state.score_at(later, s.half_life) < 0.01
    assert state.idle(later, s)


def test_a_clean_clients_first_error_waits_only_the_delay_with_reputation_on() -> None:
    s = replace(ADAPTIVE, harvest_threshold=0)
    own = observe(EMPTY, Observation.UNKNOWN_RECIPIENT, NOW, s)  # this very RCPT, observed at RCPT time
    prefix = observe(EMPTY, Observation.UNKNOWN_RECIPIENT, NOW, s, prefix=True)
    view = ClientView(exact=own, prefix=prefix)
    decision = decide(view, facts(errors=1, session_score=1.0), replies.UNKNOWN_USER, NOW, s)
    assert decision == Delay(5)


def test_a_bad_host_is_judged_by_its_own_record_not_twice() -> None:
    s = replace(ADAPTIVE, harvest_threshold=0)
    exact = fold([Observation.ERROR] * 4, s, step=0)
    prefix = EMPTY
    for _ in range(4):
        prefix = observe(prefix, Observation.ERROR, NOW, s, prefix=True)
    assert ClientView(exact, prefix).score(NOW, s) == 4
    assert ClientView(prefix=prefix).score(NOW, s) == 2  # a neighbour: half the prefix's
