"""The tar pit executor: applies a policy Decision to one reply. The only code that writes SMTP replies.

Invariants:
- Every reply to a client goes through ``submit`` (or ``cut`` for an unsolicited 421): nothing else in the
  code base writes to a client's socket.
- A held reply costs one timer handle, no task: 10,000 held sessions are 10,000 heap entries in the loop.
- ``held`` is exactly the number of sessions waiting on a delayed reply right now.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from smtp_tarpit.policy.decisions import Decision, Delay
from smtp_tarpit.protocol.replies import Reply

if TYPE_CHECKING:
    from smtp_tarpit.server.session import Session

log = logging.getLogger("smtp_tarpit.tarpit")


class Executor:
    __slots__ = ("_loop", "delayed_seconds", "held")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.held = 0
        self.delayed_seconds = 0.0

    def submit(self, session: Session, reply: Reply, wire: bytes, decision: Decision) -> bool:
        """Write now and return True, or hold the reply on a timer and return False."""
        if isinstance(decision, Delay):
            log.debug("delaying %d reply to %s by %.3fs", reply.code, session.client, decision.seconds)
            self.held += 1
            session.hold = self._loop.call_later(
                decision.seconds, self._release, session, wire, decision.seconds
            )
            return False
        self._write(session, wire)
        return True

    def _release(self, session: Session, wire: bytes, seconds: float) -> None:
        self.held -= 1
        session.hold = None
        session.delayed += seconds
        self.delayed_seconds += seconds
        self._write(session, wire)
        session.released()

    def cut(self, session: Session, reply: Reply) -> None:
        """Drop any held reply and write ``reply`` (a 421) now; the session closes after it."""
        self.drop(session)
        self._write(session, session.conn.send(reply))

    def drop(self, session: Session) -> None:
        if session.hold is not None:
            session.hold.cancel()
            session.hold = None
            self.held -= 1

    @staticmethod
    def _write(session: Session, wire: bytes) -> None:
        transport = session.transport
        if transport is not None and not transport.is_closing():
            transport.write(wire)
