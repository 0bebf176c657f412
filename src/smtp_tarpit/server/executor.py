"""The tar pit executor: applies a policy Decision to one reply. The only code that writes SMTP replies.

Invariants:
- Every reply to a client goes through ``submit`` (or ``cut`` for an unsolicited 421): nothing else in the
  code base writes to a client's socket.
- A held reply costs one timer handle at a time, no task: 10,000 held sessions are 10,000 heap entries in
  the loop. A stuttered reply re-arms the same kind of timer once per chunk.
- ``held`` is exactly the number of sessions waiting on a delayed reply right now, and never exceeds
  ``max_held``: beyond it a reply that would wait is written at once, followed by 421 and close (the tar
  pit must not exhaust its own server), and the ``max_tarpitted`` cap counter counts it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

from smtp_tarpit.observability.metrics import Stats
from smtp_tarpit.policy.decisions import Delay, Disconnect, Pass
from smtp_tarpit.protocol import replies
from smtp_tarpit.protocol.replies import Reply

if TYPE_CHECKING:
    from smtp_tarpit.server.session import Session

log = logging.getLogger("smtp_tarpit.tarpit")


class Executor:
    __slots__ = ("_loop", "delayed_seconds", "held", "max_held", "stats")

    def __init__(self, loop: asyncio.AbstractEventLoop, max_held: int, stats: Stats) -> None:
        self._loop = loop
        self.max_held = max_held
        self.stats = stats
        self.held = 0
        self.delayed_seconds = 0.0

    def submit(
        self, session: Session, reply: Reply, wire: bytes, decision: Pass | Delay | Disconnect
    ) -> bool:
        """Write now and return True, or hold the reply on a timer and return False."""
        if isinstance(decision, Disconnect):
            self._write(session, wire)  # the reply already is the 421 the policy chose
            return True
        if isinstance(decision, Pass) or decision.seconds <= 0:
            self._write(session, wire)
            return True
        if self.held >= self.max_held:
            self.stats.cap("max_tarpitted")
            log.warning("tar pit full (%d held): answering %s at once and closing", self.held, session.client)
            self._write(session, wire)
            self.cut(session, replies.SERVER_BUSY)
            return True
        log.debug("delaying %d reply to %s by %.3fs", reply.code, session.client, decision.seconds)
        self.held += 1
        session.held_since = self._loop.time()
        self._hold(session, wire, decision)
        return False

    def _hold(self, session: Session, wire: bytes, decision: Delay) -> None:
        chunks = min(max(decision.chunks, 1), len(wire))
        if decision.lead:
            self._write(session, wire[: decision.lead])
            wire = wire[decision.lead :]
            chunks = min(chunks, max(len(wire), 1))
        step = decision.seconds / chunks
        size = math.ceil(len(wire) / chunks)
        session.hold = self._loop.call_later(step, self._tick, session, wire, size, step, decision.seconds)

    def _tick(self, session: Session, rest: bytes, size: int, step: float, seconds: float) -> None:
        if len(rest) > size:  # stutter: one more chunk now, the rest later
            self._write(session, rest[:size])
            session.hold = self._loop.call_later(step, self._tick, session, rest[size:], size, step, seconds)
            return
        self.held -= 1
        session.hold = None
        self._served(session, seconds)
        self._write(session, rest)
        session.released()

    def _served(self, session: Session, seconds: float) -> None:
        session.delayed += seconds
        self.delayed_seconds += seconds
        self.stats.delayed(seconds, time.strftime("%Y-%m-%d"))

    def cut(self, session: Session, reply: Reply) -> None:
        """Drop any held reply and write ``reply`` (a 421) now; the session closes after it."""
        self.drop(session)
        self._write(session, session.conn.send(reply))
        if session.transport is not None:
            session.transport.close()

    def drop(self, session: Session) -> None:
        """Cancel a held reply (the client left, or we cut it); the time it was held still counts."""
        if session.hold is not None:
            session.hold.cancel()
            session.hold = None
            self.held -= 1
            self._served(session, self._loop.time() - session.held_since)

    @staticmethod
    def _write(session: Session, wire: bytes) -> None:
        transport = session.transport
        if transport is not None and not transport.is_closing():
            transport.write(wire)
