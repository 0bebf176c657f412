"""What happens to accepted mail: deliverers behind one small interface, chosen by name from config.

Invariants:
- ``deliver`` (and ``begin(...).finish``) returns only once the message is durable (or relayed and
  acknowledged downstream); any failure raises ``DeliveryError`` and the client gets a 4xx, never a 250.
- A deliverer never generates a bounce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from smtp_tarpit.delivery.outgoing import Outgoing


class DeliveryError(Exception):
    """The message could not be delivered now; the client must try again later (451 4.3.0)."""


class DownstreamRefusedError(DeliveryError):
    """The downstream refused permanently (5xx): the client gets a 5xx of the same class, never a bounce."""

    def __init__(self, code: int, enhanced: str, where: str) -> None:
        super().__init__(f"downstream refused at {where}: {code} {enhanced}")
        self.code, self.enhanced = code, enhanced


class TargetUnavailableError(DeliveryError):
    """The delivery target (the downstream MTA) cannot be reached now (451 4.4.1)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    message_id: str
    sender: str  # "" for the null reverse-path
    mailboxes: tuple[str, ...]  # target mailbox addresses, deduplicated, lower case
    recipients: tuple[str, ...]  # the addresses the client gave (what a relay passes on)
    client: str = ""  # the client's IP address, for trace data downstream
    helo: str = ""  # printable form of the client's HELO name
    protocol: str = "ESMTP"
    smtputf8: bool = False
    eight_bit: bool = False  # the client declared BODY=8BITMIME (or the text is known to need it)


class Deliverer(Protocol):
    # A final deliverer stores the message where its reader finds it, so it adds Return-Path (RFC 5321
    # 4.4); a relay passes the message on and leaves that to the final delivery agent.
    final: bool
    # An early deliverer begins at the client's 354 (a relay opens its downstream transaction then); the
    # others begin when the text no longer fits one part, and take a short message whole (``deliver``).
    early: bool

    async def deliver(self, envelope: Envelope, message: bytes) -> None: ...

    def begin(self, envelope: Envelope, head: bytes) -> Outgoing:
        """Start delivering a message whose text (after ``head``, our trace headers) is still arriving."""
        ...

    async def close(self) -> None:
        """At shutdown, after the last message: let go of kept connections."""
        ...

    def check(self) -> None:
        """Raise DeliveryError if the target is unusable (at start and for health checks)."""
        ...

    @property
    def available(self) -> bool:
        """False while the target is known to be down: new sessions are then refused with 421 4.4.1."""
        ...
