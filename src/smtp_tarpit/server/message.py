"""The message a session is receiving: its envelope, its trace headers, and where its text goes.

Made when the client's DATA is answered 354. A relay deliverer (``early``) begins at once, so the
downstream transaction is open while the client sends; a Maildir begins only when the text comes in more
than one part (a long message, written to disk as it arrives) and otherwise takes the message whole in one
worker-thread step. ``finish`` returns the reply to the final dot: 250 only once the destination has the
message; every failure a 4xx (or the downstream's own 5xx), never a 250.

Invariants:
- At most one delivery per message; ``abort`` (a refused message, a client gone) leaves nothing delivered.
- ``backlog`` bounds what a fast client can pile up in front of a slow destination: the session stops
  reading above ``HIGH_WATER``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from smtp_tarpit.delivery import DeliveryError, DownstreamRefusedError, Envelope, TargetUnavailableError
from smtp_tarpit.delivery.outgoing import Outgoing
from smtp_tarpit.protocol import SmtpConnection, replies
from smtp_tarpit.protocol.replies import Reply
from smtp_tarpit.server.trace import Trace, printable, protocol_name, trace_headers

if TYPE_CHECKING:
    from smtp_tarpit.delivery import Deliverer
    from smtp_tarpit.policy.decisions import IPAddress

log = logging.getLogger("smtp_tarpit.session")
HIGH_WATER = 64 * 1024  # octets: a session pauses reading while this much input or backlog is waiting


class Transaction:
    """What MAIL and the accepted RCPTs have said about the message to come."""

    __slots__ = ("eight_bit", "mailboxes", "recipients", "sender", "smtputf8")

    def __init__(self, sender: str, smtputf8: bool, eight_bit: bool) -> None:
        self.sender = sender
        self.smtputf8 = smtputf8
        self.eight_bit = eight_bit
        self.mailboxes: list[str] = []
        self.recipients: list[str] = []

    def add(self, pending: tuple[str, str]) -> None:
        mailbox, recipient = pending
        if mailbox not in self.mailboxes:
            self.mailboxes.append(mailbox)
        self.recipients.append(recipient)

    def start(
        self,
        deliverer: Deliverer,
        conn: SmtpConnection,
        client: IPAddress | None,
        message_id: str,
        hostname: str,
    ) -> Incoming:
        """The client's DATA was answered 354: the message begins."""
        trace = Trace(
            conn.helo_name, str(client), conn.extended, conn.tls_active, conn.authenticated, self.smtputf8
        )
        envelope = Envelope(
            message_id,
            self.sender,
            tuple(self.mailboxes),
            tuple(self.recipients),
            client=str(client or ""),
            helo=printable(conn.helo_name, limit=255),
            protocol=protocol_name(trace),
            smtputf8=self.smtputf8,
            eight_bit=self.eight_bit or self.smtputf8,
        )
        head = trace_headers(trace, hostname, envelope, return_path=deliverer.final)
        return Incoming(deliverer, client, envelope, head)


class Incoming:
    __slots__ = ("client", "deliverer", "envelope", "head", "octets", "outgoing", "started")

    def __init__(
        self, deliverer: Deliverer, client: IPAddress | None, envelope: Envelope, head: bytes
    ) -> None:
        self.envelope = envelope
        self.client = client
        self.deliverer = deliverer
        self.head = head
        self.started = time.monotonic()
        self.octets = len(head)
        self.outgoing: Outgoing | None = deliverer.begin(envelope, head) if deliverer.early else None

    @property
    def backlog(self) -> int:
        return 0 if self.outgoing is None else self.outgoing.backlog

    def part(self, text: bytes) -> None:
        """Lines from the middle of the message: on their way at once."""
        if self.outgoing is None:
            self.outgoing = self.deliverer.begin(self.envelope, self.head)
        self.octets += len(text)
        self.outgoing.write(text)

    def abort(self) -> None:
        if self.outgoing is not None:
            self.outgoing.abort()

    async def finish(self, text: bytes) -> tuple[Reply, str]:
        """Deliver the end of the message; the reply to the final dot and the result for the log."""
        self.octets += len(text)
        try:
            if self.outgoing is None:
                await self.deliverer.deliver(self.envelope, self.head + text)
            else:
                await self.outgoing.finish(text)
        except DownstreamRefusedError as exc:
            return replies.downstream_refused(exc.code, exc.enhanced), f'refused detail="{_detail(exc)}"'
        except TargetUnavailableError as exc:
            return replies.TARGET_UNAVAILABLE, f'deferred detail="{_detail(exc)}"'
        except DeliveryError as exc:
            return replies.LOCAL_ERROR, f'deferred detail="{_detail(exc)}"'
        except Exception:  # never a 250 for a failure, whatever the failure is
            log.exception("delivery of %s failed unexpectedly", self.envelope.message_id)
            return replies.LOCAL_ERROR, 'deferred detail="internal error"'
        return replies.queued(self.envelope.message_id), "delivered"

    def log(self, result: str) -> None:
        envelope = self.envelope
        log.info(
            "message id=%s client=%s from=<%s> to=%s size=%d result=%s seconds=%.3f",
            envelope.message_id,
            self.client,
            printable(envelope.sender),
            ",".join(f"<{printable(r)}>" for r in envelope.recipients),
            self.octets,
            result,
            time.monotonic() - self.started,
        )


def _detail(exc: Exception) -> str:
    return str(exc).replace('"', "'")
