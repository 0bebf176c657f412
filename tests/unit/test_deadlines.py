"""Session deadlines with a fake clock: silence, slow commands (slowloris), slow message data."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from smtp_tarpit.protocol import replies
from smtp_tarpit.server.deadlines import Timeouts, Waiting, overdue

LIMITS = Timeouts(idle=300.0, command=60.0, min_data_rate=500)


def test_a_quiet_session_is_closed_after_the_idle_timeout_and_not_before() -> None:
    assert overdue(299.9, Waiting(last_active=0.0), LIMITS) == (None, 300.0)
    assert overdue(300.0, Waiting(last_active=0.0), LIMITS) == (replies.IDLE_TIMEOUT, 300.0)


def test_a_command_dribbled_a_byte_at_a_time_is_cut_at_the_command_timeout() -> None:
    # A byte every 5 s: never silent for long, yet the line began 60 s ago.
    waiting = Waiting(last_active=59.0, command_since=0.5)
    assert overdue(60.0, waiting, LIMITS) == (None, 60.5)
    assert overdue(60.5, waiting, LIMITS)[0] is replies.COMMAND_TOO_SLOW


def test_message_data_must_keep_the_minimum_rate_after_the_grace() -> None:
    # 10 s into DATA at 100 octets/s: allowed 60 s grace + 1000 / 500 s.
    slow = Waiting(last_active=10.0, data_since=1.0, data_octets=1000)
    assert overdue(62.9, slow, LIMITS) == (None, 63.0)
    assert overdue(63.0, slow, LIMITS)[0] is replies.DATA_TOO_SLOW
    fast = Waiting(last_active=62.9, data_since=1.0, data_octets=1_000_000)  # 16 kB/s: fine for 2000 s
    assert overdue(63.0, fast, LIMITS)[0] is None


def test_no_minimum_rate_when_it_is_zero() -> None:
    waiting = Waiting(last_active=250.0, data_since=1.0, data_octets=0)
    assert overdue(299.0, waiting, Timeouts(300.0, 60.0, 0)) == (None, 550.0)


@given(
    st.floats(0, 1e6),
    st.floats(0, 1e6),
    st.floats(0, 1e6),
    st.integers(0, 10**9),
    st.floats(0, 2e6),
)
def test_never_overdue_before_every_limit_has_run_out_and_the_next_check_is_not_in_the_past(
    last: float, command: float, data: float, octets: int, now: float
) -> None:
    waiting = Waiting(last, command, data, octets)
    reply, when = overdue(now, waiting, LIMITS)
    if reply is None:
        assert when > now
    else:
        assert when == now
        assert now >= min(
            last + LIMITS.idle,
            command + LIMITS.command if command else float("inf"),
            data + LIMITS.command + octets / LIMITS.min_data_rate if data else float("inf"),
        )
