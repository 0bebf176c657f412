"""What the policy can decide about one reply, and the facts it decides from.

Invariants: values only (frozen, slotted); no clock, no I/O. Delays are seconds, already capped by config.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Pass:
    """Write the reply now."""


@dataclass(frozen=True, slots=True)
class Delay:
    """Write the reply after ``seconds``."""

    seconds: float


PASS = Pass()

Decision = Pass | Delay


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the policy may know about the session a reply belongs to."""

    client: IPAddress | None
    authenticated: bool
    exempt: bool  # the client is in [tarpit] exempt_networks
