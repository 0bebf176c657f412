"""What happens to accepted mail: deliverers behind one small interface, chosen by name from config.

Invariants:
- ``deliver`` returns only once the message is durable (or relayed and acknowledged downstream); any
  failure raises ``DeliveryError`` and the client gets a 4xx, never a 250.
- A deliverer never generates a bounce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class DeliveryError(Exception):
    """The message could not be delivered now; the client must try again later (451 4.3.0)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    message_id: str
    sender: str  # "" for the null reverse-path
    mailboxes: tuple[str, ...]  # target mailbox addresses, deduplicated, lower case
    recipients: tuple[str, ...]  # the addresses the client gave, for the log


class Deliverer(Protocol):
    async def deliver(self, envelope: Envelope, message: bytes) -> None: ...

    def check(self) -> None:
        """Raise DeliveryError if the target is unusable (at start and for health checks)."""
        ...
