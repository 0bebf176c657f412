"""A session's answer to each SMTP event: one function per kind of event (``HANDLERS``).

Each handler gets the session and the event and returns the reply, or None when the answer is worked out
off the loop (a recipient verification, a delivery, a password check, the TLS handshake) and given later
through ``Session.finish``. The session (server/session.py) owns the connection, the pump, the policy and
the timers; this module owns what each command means: the directory, the transaction, the message on its
way, STARTTLS and AUTH.

Invariants:
- A handler that returns None has arranged exactly one later ``session.finish`` (or the end of the
  connection); one that returns a reply has arranged none.
- An unknown recipient is observed when it is answered, before any delay (``OBSERVED``), so parallel
  connections cannot race the harvest flag.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from smtp_tarpit.delivery.outgoing import Outgoing
from smtp_tarpit.directory.recipients import Verdict
from smtp_tarpit.policy.decisions import Stage
from smtp_tarpit.policy.reputation import Observation
from smtp_tarpit.protocol import replies
from smtp_tarpit.protocol.events import (
    Answer,
    AuthCredentials,
    Data,
    Event,
    Helo,
    Help,
    Mail,
    Message,
    MessagePart,
    Noop,
    Problem,
    Quit,
    Rcpt,
    Rset,
    StartTls,
    Vrfy,
)
from smtp_tarpit.protocol.replies import Reply
from smtp_tarpit.server.message import HIGH_WATER, Incoming, Transaction

if TYPE_CHECKING:
    from smtp_tarpit.server.session import Session

log = logging.getLogger("smtp_tarpit.session")
OBSERVED = object()  # the error was already observed when it happened (an unknown recipient at its RCPT)


def on_helo(session: Session, event: Event) -> Reply | None:
    assert isinstance(event, Helo)
    hostname = session.server.runtime.config.server.hostname
    if event.extended:
        return replies.ehlo(hostname, session.conn.extensions())
    return replies.helo(hostname)


def on_mail(session: Session, event: Event) -> Reply | None:
    assert isinstance(event, Mail)
    if session.server.disk.low:
        return replies.INSUFFICIENT_STORAGE
    session.transaction = Transaction(
        str(event.sender) if event.sender else "", event.smtputf8, event.eight_bit
    )
    return replies.SENDER_OK


def on_rcpt(session: Session, event: Event) -> Reply | None:
    assert isinstance(event, Rcpt)
    runtime = session.server.runtime
    recipient = event.recipient
    found = runtime.directory.resolve(recipient)
    if found.verdict is Verdict.NOT_LOCAL:
        if session.conn.authenticated and runtime.config.delivery.relay and not recipient.relay_trick:
            return _accept(session, recipient.key, str(recipient))  # the downstream decides
        return replies.RELAY_DENIED
    verifier = runtime.verifier
    if verifier is None or not recipient.domain or recipient.local.casefold() == "postmaster":
        return _rcpt_answer(session, found.verdict is Verdict.ACCEPT, found.mailbox, str(recipient))
    if session.server.tarpit.view(session.keys).flagged(session.server.tarpit.now()):
        # A flagged harvester never reaches the downstream; the policy answers it uniformly anyway.
        return _accept(session, recipient.key, str(recipient))
    known = verifier.cached(recipient.key)
    if known is not None:
        return _rcpt_answer(session, known, recipient.key, str(recipient))
    session.server.spawn(_verify(session, recipient.key, str(recipient)))
    return None


async def _verify(session: Session, key: str, recipient: str) -> None:
    verifier = session.server.runtime.verifier
    assert verifier is not None
    answer = await verifier.verify(key)
    if answer is None:
        session.finish(replies.RECIPIENT_UNVERIFIED)
    else:
        session.finish(_rcpt_answer(session, answer, key, recipient))


def _rcpt_answer(session: Session, valid: bool, mailbox: str, recipient: str) -> Reply:
    if valid:
        return _accept(session, mailbox, recipient)
    # Counted now, before any delay: parallel connections cannot race the harvest flag.
    if not (session.conn.authenticated or session.exempt):
        session.session_score += session.server.tarpit.observe(session.keys, Observation.UNKNOWN_RECIPIENT)
    session.observation = OBSERVED
    return replies.UNKNOWN_USER


def _accept(session: Session, mailbox: str, recipient: str) -> Reply:
    # Kept aside until the reply is known: the policy may answer a flagged client 450 instead.
    session.pending_mailbox = (mailbox, recipient)
    return replies.RECIPIENT_OK


def on_data(session: Session, event: Event) -> Reply | None:
    if session.transaction is None or not session.transaction.mailboxes:
        # Only reachable when every 250 to RCPT was the harvest defence's uniform answer: the policy
        # turns this into the uniform 451 while the flag holds; after it, the plain truth.
        return replies.NO_VALID_RECIPIENTS
    if not session.server.room_for_a_message():
        return replies.TOO_MANY_MESSAGES
    return replies.START_DATA


def message_begins(session: Session) -> None:
    transaction, session.transaction = session.transaction, None
    assert transaction is not None
    runtime = session.server.runtime
    message_id = session.server.new_message_id()
    hostname = runtime.config.server.hostname
    session.incoming = transaction.start(
        runtime.deliverer, session.conn, session.client, message_id, hostname
    )


def message_part(session: Session, event: MessagePart) -> None:
    incoming = session.incoming
    assert incoming is not None
    incoming.part(event.content)
    if incoming.backlog > HIGH_WATER and incoming.outgoing is not None:
        # The destination is slower than the client: stop reading until it has caught up.
        session.pause()
        session.server.spawn(_caught_up(session, incoming.outgoing))


async def _caught_up(session: Session, outgoing: Outgoing) -> None:
    await outgoing.drained()
    session.resume()


def on_message(session: Session, event: Event) -> Reply | None:
    assert isinstance(event, Message)
    incoming, session.incoming = session.incoming, None
    assert incoming is not None
    session.server.spawn(_deliver(session, incoming, event.content))
    return None


async def _deliver(session: Session, incoming: Incoming, text: bytes) -> None:
    reply, result = await incoming.finish(text)
    if reply.code == 250 and not (session.conn.authenticated or session.exempt):
        session.server.tarpit.observe(session.keys, Observation.DELIVERED)
    outcome = "accepted" if reply.code == 250 else "refused" if reply.code >= 500 else "deferred"
    session.server.stats.message(outcome, time.monotonic() - incoming.started)
    incoming.log(result)
    session.finish(reply)


def on_simple(session: Session, event: Event) -> Reply | None:
    return _SIMPLE[type(event)](session)


def on_starttls(session: Session, event: Event) -> Reply | None:
    if session.server.runtime.tls is None:
        return replies.TLS_UNAVAILABLE
    session.tls_upgrading = True
    return replies.READY_FOR_TLS


async def upgrade(session: Session) -> None:
    runtime = session.server.runtime
    assert runtime.tls is not None and session.transport is not None
    try:
        transport = await session.server.loop.start_tls(
            session.transport,
            session,
            runtime.tls,
            server_side=True,
            ssl_handshake_timeout=30,
            # After our 221/421 a client that never answers close_notify must not hold the session
            # (and a shutdown) for asyncio's default 30 s.
            ssl_shutdown_timeout=2,
        )
    except (TimeoutError, OSError, ConnectionError) as exc:
        log.info("TLS handshake with %s failed: %s", session.client, exc.__class__.__name__)
        if session.transport is not None:
            session.transport.abort()
        return
    if transport is None:
        return
    session.transport, session.tls_upgrading, session.busy = transport, False, False
    session.last_active = session.server.loop.time()
    session.pump()


def on_auth(session: Session, event: Event) -> Reply | None:
    assert isinstance(event, AuthCredentials)
    session.server.spawn(_check_password(session, event))
    return None


async def _check_password(session: Session, event: AuthCredentials) -> None:
    users = session.server.runtime.users
    ok = False
    try:
        if users is not None and event.authzid in ("", event.username):
            ok = await session.server.check_password(users, event.username, event.password)
    except Exception:
        log.exception("password check for %s failed unexpectedly", session.client)
        session.finish(replies.AUTH_TEMPORARY_FAILURE)
        return
    if not ok:
        session.observation = Observation.AUTH_FAILURE
    log.info(
        "auth client=%s user=%s mechanism=%s result=%s",
        session.client,
        event.username[:64],
        event.mechanism,
        "ok" if ok else "failed",
    )
    session.finish(replies.AUTH_OK if ok else replies.AUTH_FAILED)


def on_answer(session: Session, event: Event) -> Reply | None:
    assert isinstance(event, Answer)
    if session.incoming is not None and session.conn.in_data:  # the message is refused: none of it goes
        session.incoming.abort()
        session.incoming = None
    if event.problem is not Problem.CHALLENGE:
        session.observation = Observation.PROTOCOL
    return event.reply


def _quit(session: Session) -> Reply:
    session.outcome = "quit"
    return replies.bye(session.server.runtime.config.server.hostname)


_SIMPLE: dict[type, Callable[[Session], Reply]] = {
    Rset: lambda s: replies.OK,
    Noop: lambda s: replies.OK,
    Vrfy: lambda s: replies.VRFY_CANNOT,
    Help: lambda s: replies.HELP,
    Quit: _quit,
}

# Per kind of event: its handler, which client wait its reply ends (for the policy's caps) and its metrics
# label. One table, so a kind of event cannot have a handler and no stage, or the other way round.
HANDLERS: dict[type, tuple[Callable[[Session, Event], Reply | None], Stage, str]] = {
    Helo: (on_helo, Stage.COMMAND, "helo"),
    Mail: (on_mail, Stage.COMMAND, "mail"),
    Rcpt: (on_rcpt, Stage.RCPT, "rcpt"),
    Data: (on_data, Stage.DATA, "data"),
    Message: (on_message, Stage.MESSAGE, "message"),
    Rset: (on_simple, Stage.COMMAND, "rset"),
    Noop: (on_simple, Stage.COMMAND, "noop"),
    Vrfy: (on_simple, Stage.COMMAND, "vrfy"),
    Help: (on_simple, Stage.COMMAND, "help"),
    Quit: (on_simple, Stage.QUIT, "quit"),
    StartTls: (on_starttls, Stage.COMMAND, "starttls"),
    AuthCredentials: (on_auth, Stage.COMMAND, "auth"),
    Answer: (on_answer, Stage.COMMAND, "protocol"),
}
