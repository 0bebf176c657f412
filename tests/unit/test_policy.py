"""The seed policy, pure: which replies wait and which never do."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from smtp_tarpit.policy.decisions import PASS, Delay, SessionFacts
from smtp_tarpit.policy.seed import SeedPolicy
from smtp_tarpit.protocol import replies
from smtp_tarpit.protocol.replies import Reply

ANONYMOUS = SessionFacts(ipaddress.ip_address("192.0.2.1"), authenticated=False, exempt=False)


def test_5xx_to_an_anonymous_client_waits_the_delay() -> None:
    assert SeedPolicy(5).decide(ANONYMOUS, replies.UNKNOWN_USER) == Delay(5)


def test_delay_zero_is_off() -> None:
    assert SeedPolicy(0).decide(ANONYMOUS, replies.UNKNOWN_USER) is PASS


@given(
    code=st.integers(200, 599),
    authenticated=st.booleans(),
    exempt=st.booleans(),
    delay=st.floats(0, 240),
)
def test_only_anonymous_5xx_is_ever_delayed_and_never_beyond_the_setting(
    code: int, authenticated: bool, exempt: bool, delay: float
) -> None:
    facts = SessionFacts(None, authenticated, exempt)
    decision = SeedPolicy(delay).decide(facts, Reply(code, None, ("x",)))
    if isinstance(decision, Delay):
        assert code >= 500 and not authenticated and not exempt
        assert 0 < decision.seconds <= delay
    else:
        assert code < 500 or authenticated or exempt or delay == 0
