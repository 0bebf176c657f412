"""What the policy can decide about one reply, and the facts it decides from.

A Decision says *when* and *how* a reply goes out: ``Pass`` (now), ``Delay`` (after some seconds, optionally
stuttered out in chunks), ``Replace`` (another reply, itself passed or delayed) and ``Disconnect`` (a 421
and close). The executor applies it; the policy never touches a socket.

Invariants: values only (frozen, slotted); no clock, no I/O. Every delay here is already within its caps.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from smtp_tarpit.protocol.replies import Reply

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Pass:
    """Write the reply now."""


@dataclass(frozen=True, slots=True)
class Delay:
    """Write the reply after ``seconds``, in ``chunks`` pieces spread over that time (a stutter).

    ``lead`` octets go out at once (a teaser greeting's first line); the rest follows the schedule.
    """

    seconds: float
    chunks: int = 1
    lead: int = 0


@dataclass(frozen=True, slots=True)
class Replace:
    """Send ``reply`` instead of the proposed one, applying ``then`` to it."""

    reply: Reply
    then: Pass | Delay


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Send ``reply`` (a 421) now and close the connection."""

    reply: Reply


PASS = Pass()

Decision = Pass | Delay | Replace | Disconnect


class Stage(enum.Enum):
    """Which client wait a reply ends: RFC 5321 4.5.3.2 gives each its own timeout."""

    # Members are singletons compared by identity: hash them so too (Enum's own __hash__ is Python code,
    # and these are dictionary keys on every command).
    __hash__ = object.__hash__

    COMMAND = "command"  # greeting-less commands: EHLO, MAIL, RCPT, RSET, ... (5 minutes)
    RCPT = "rcpt"  # a reply to RCPT (5 minutes); the one a harvester learns from
    DATA = "data"  # the reply to the DATA command itself (2 minutes)
    MESSAGE = "message"  # the reply after the final dot (10 minutes, but the message is at stake)
    QUIT = "quit"  # never delayed


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the policy may know about the session a reply belongs to."""

    client: IPAddress | None
    authenticated: bool
    exempt: bool  # [tarpit] exempt_networks or exempt_hostnames
    stage: Stage = Stage.COMMAND
    errors: int = 0  # error replies in this session so far, this one included if it is one
    delayed: float = 0.0  # seconds this session has already been held
    early_talker: bool = False
    extra_score: float = 0.0  # added to the client's score for this session (DNSBL listings)
    session_score: float = 0.0  # what this session's own observations added to the remembered score


def delay_of(decision: Decision) -> float:
    """Seconds a decision holds the reply (0 for Pass and Disconnect)."""
    if isinstance(decision, Delay):
        return decision.seconds
    if isinstance(decision, Replace) and isinstance(decision.then, Delay):
        return decision.then.seconds
    return 0.0
