"""When a session has waited on its client too long: silence, a slow command, slow message data.

One timer per session (not one per limit) checks all three; ``overdue`` says whether one has passed and
when to look again. Pure: ``now`` is passed in, so the rules are tested with a fake clock.

- Silence: nothing received for ``idle_timeout`` (RFC 5321 4.5.3.2.7 asks servers to wait 5 minutes).
- A command line begun but not finished within ``command_timeout`` of its first byte (slowloris: a byte
  every few seconds keeps silence from ever counting).
- Message data arriving slower on average than ``min_data_rate`` octets per second, after a first
  ``command_timeout`` of grace (Postfix's smtpd_min_data_rate works the same way).

Invariants: while the session is busy (our own delay or work) none of these counts against the client;
every deadline is at least one second away from the moment it starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtp_tarpit.protocol import replies
from smtp_tarpit.protocol.replies import Reply


@dataclass(frozen=True, slots=True)
class Timeouts:
    idle: float
    command: float
    min_data_rate: int  # octets per second; 0 = no minimum


@dataclass(frozen=True, slots=True)
class Waiting:
    """What the session is waiting for, as of now."""

    last_active: float  # when the client last sent anything (or we last answered)
    command_since: float = 0.0  # when the unfinished command line we hold began (0: none)
    data_since: float = 0.0  # when message data began (0: not in DATA)
    data_octets: int = 0  # octets of message data received so far


def overdue(now: float, waiting: Waiting, limits: Timeouts) -> tuple[Reply | None, float]:
    """The 421 to close the session with (None while all is well) and when to check again."""
    due = [(waiting.last_active + limits.idle, replies.IDLE_TIMEOUT)]
    if waiting.command_since:
        due.append((waiting.command_since + limits.command, replies.COMMAND_TOO_SLOW))
    if waiting.data_since and limits.min_data_rate:
        allowed = limits.command + waiting.data_octets / limits.min_data_rate
        due.append((waiting.data_since + allowed, replies.DATA_TOO_SLOW))
    when, reply = min(due, key=lambda item: item[0])
    if now >= when:
        return reply, now
    return None, when
