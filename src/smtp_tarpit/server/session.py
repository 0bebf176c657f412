"""One client connection: glue between the socket, the SMTP core, the policy and the event handlers.

Theory of operation: an ``asyncio.Protocol`` (no task per connection: a held session costs its transport,
this object, the core and one or two timer handles). Bytes go into the core; events come out one at a time;
each gets a reply, which the policy turns into a Decision and the executor writes (now, or later on a
timer). What each event means (the directory, the transaction, delivery, STARTTLS, AUTH) is in
server/handlers.py. While a reply is held or an answer is being worked out off the loop (delivery,
password check), no further event is taken: pipelined commands wait in the core's buffer and are answered
in order, each after its own delay. Reading pauses when that buffer grows past a high-water mark.

Invariants:
- ``busy`` is true exactly while a reply is held or an answer is pending; the pump never runs then.
- The idle timer measures the client's silence only: time spent holding a reply never counts against it.
- Bytes that reach us on the plaintext transport after our 220 to STARTTLS are dropped (CVE-2011-0411).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from smtp_tarpit.policy.decisions import Delay, Disconnect, IPAddress, Pass, SessionFacts, Stage
from smtp_tarpit.policy.reputation import ClientKeys, Observation
from smtp_tarpit.protocol import Features, SmtpConnection, replies
from smtp_tarpit.protocol.events import MessagePart, NeedData
from smtp_tarpit.protocol.proxy import ProxyHeaderError, parse_proxy_header
from smtp_tarpit.protocol.replies import Reply
from smtp_tarpit.server import handlers
from smtp_tarpit.server.deadlines import Waiting, overdue
from smtp_tarpit.server.message import HIGH_WATER, Incoming, Transaction
from smtp_tarpit.server.runtime import is_loopback, parse_peer
from smtp_tarpit.server.trace import printable

if TYPE_CHECKING:
    from smtp_tarpit.server.listener import Server

log = logging.getLogger("smtp_tarpit.session")
PROXY_HEADER_TIMEOUT = 10.0  # seconds a balancer has to send its PROXY header (it sends it at once)


class Session(asyncio.Protocol):
    __slots__ = (
        "blocked",
        "busy",
        "client",
        "command_since",
        "commands",
        "conn",
        "data_octets",
        "data_since",
        "delayed",
        "early_talker",
        "errors",
        "exempt",
        "greeted",
        "held_since",
        "hold",
        "hostname",
        "idle",
        "incoming",
        "keys",
        "label",
        "last_active",
        "listed",
        "observation",
        "outcome",
        "paused",
        "pending_mailbox",
        "proxy",
        "server",
        "session_score",
        "stage",
        "started",
        "tls_upgrading",
        "transaction",
        "transport",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.hold: asyncio.TimerHandle | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.busy = False
        self.blocked = False  # the transport's write buffer is full: the client is not reading
        self.paused = False
        self.tls_upgrading = False
        self.transaction: Transaction | None = None
        self.incoming: Incoming | None = None  # the message being received, from 354 to its answer
        self.commands = self.errors = 0
        self.delayed = 0.0
        self.outcome = "disconnect"
        self.started = self.last_active = 0.0
        self.command_since = self.data_since = 0.0  # deadlines (server/deadlines.py)
        self.data_octets = 0
        self.client: IPAddress | None = None
        self.keys: ClientKeys | None = None
        self.exempt = self.early_talker = self.greeted = False
        self.hostname = ""  # forward-confirmed reverse DNS name, when DNS checks are on
        self.listed = 0.0  # extra score from DNSBL listings
        self.session_score = 0.0  # what this session's observations added to the client's score
        self.stage = Stage.COMMAND
        self.label = "greeting"  # the command a reply answers, for metrics
        self.held_since = 0.0
        self.observation: Observation | object | None = None  # what a 5xx says of the client
        self.pending_mailbox: tuple[str, str] | None = None
        self.proxy: bytearray | None = None  # bytes of a PROXY header still being read

    # --- connection lifecycle ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports are not asyncio.Transport subclasses, yet behave so.
        self.transport = cast(asyncio.Transport, transport)
        self.started = self.last_active = self.server.loop.time()
        peer = parse_peer(transport.get_extra_info("peername"))
        if self.server.runtime.proxied(peer):
            # A load balancer: the real client's address comes first, in a PROXY header (v1 or v2).
            self.client, self.proxy = peer, bytearray()
            self.idle = self.server.loop.call_later(PROXY_HEADER_TIMEOUT, self._proxy_failed, "timeout")
            return
        self._start(peer)

    def _proxy_header(self, data: bytes) -> None:
        assert self.proxy is not None
        self.proxy += data
        try:
            parsed = parse_proxy_header(bytes(self.proxy))
        except ProxyHeaderError as exc:
            self._proxy_failed(str(exc))
            return
        if parsed is None:
            return
        info, used = parsed
        rest, self.proxy = bytes(self.proxy[used:]), None
        if self.idle is not None:
            self.idle.cancel()
        self._start(info.client or self.client)
        if rest and self.transport is not None:
            self.data_received(rest)

    def _proxy_failed(self, reason: str) -> None:
        # The balancer speaks PROXY, not SMTP: no SMTP reply, just close.
        log.warning("no valid PROXY header from %s: %s", self.client, reason)
        self.outcome = "refused"
        if self.transport is not None:
            self.transport.abort()

    def _start(self, client: IPAddress | None) -> None:
        runtime = self.server.runtime
        self.client = client
        self.keys = self.server.tarpit.keys(self.client)
        self.exempt = runtime.exempt(self.client)
        features = Features(
            starttls=runtime.tls is not None,
            auth=runtime.users is not None,
            plaintext_auth=runtime.config.auth.plaintext_from_loopback and is_loopback(self.client),
        )
        self.conn = SmtpConnection(runtime.limits, features)
        refusal = self.server.admit(self)
        if refusal is not None:
            self.outcome = "refused"
            self.server.executor.cut(self, refusal)
            return
        self._arm_idle(self.server.idle_timeout)
        if (runtime.dns is not None or self.server.tarpit.shared is not None) and not self.exempt:
            # Greeted once the DNS checks (each bounded by [dns] timeout) and the client's records from the
            # shared store (bounded by [reputation] store_timeout) are in: its first RCPT is judged by what
            # every host knows.
            self.busy = True
            self.server.spawn(self._classify())
        else:
            self._greet()

    async def _classify(self) -> None:
        assert self.client is not None
        verdict, _ = await asyncio.gather(
            self.server.classify(self.client), self.server.tarpit.refresh(self.keys)
        )
        self.hostname, self.listed = verdict.hostname, verdict.listed
        self.exempt = self.exempt or verdict.exempt
        if self.transport is None or self.conn.closed:
            return
        self.busy = False
        self._greet()
        self.pump()

    def _greet(self) -> None:
        config = self.server.runtime.config
        watching = self.server.runtime.settings.watch
        pause = 0.0 if self.exempt or watching else config.greet.pause
        greeting = replies.greeting(config.server.hostname, teaser=config.greet.teaser and pause > 0)
        if pause <= 0:
            self._answer(greeting)
            return
        # Bots are impatient: most hang up within 30 s. Whoever talks before the greeting is an early talker.
        lead = greeting.wire.index(b"\n") + 1 if len(greeting.lines) > 1 else 0
        if not self.server.executor.submit(self, greeting, self.conn.send(greeting), Delay(pause, lead=lead)):
            self.busy = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.incoming is not None:  # gone in the middle of a message: nothing of it is delivered
            self.incoming.abort()
            self.incoming = None
        if self.data_since:
            self._data_ends()
        if self.hold is not None:  # the client hung up while we held its reply: how patient was it?
            self.server.stats.hangups.observe(self.server.loop.time() - self.held_since)
        self.server.executor.drop(self)
        if self.idle is not None:
            self.idle.cancel()
        self.transport = None
        self.server.forget(self)
        if self.outcome != "refused" and self.proxy is None:
            log.info(
                "session end client=%s host=%s helo=%s commands=%d errors=%d delayed=%.1fs duration=%.1fs "
                "dnsbl=%g outcome=%s",
                self.client,
                self.hostname or "-",
                printable(self.conn.helo_name) or "-",
                self.commands,
                self.errors,
                self.delayed,
                self.server.loop.time() - self.started,
                self.listed,
                self.outcome,
            )

    def data_received(self, data: bytes) -> None:
        if self.proxy is not None:
            self._proxy_header(data)
            return
        if self.tls_upgrading and self.transport is not None and self.transport.get_protocol() is self:
            # Plaintext sent after our 220 to STARTTLS, before the handshake: never executed. Once
            # start_tls has taken the socket over, data reaches us decrypted (possibly before start_tls
            # returns, with the client's last handshake flight): that is kept and answered after it.
            return
        self.last_active = self.server.loop.time()
        if self.data_since:
            self.data_octets += len(data)
        if not self.greeted and not self.early_talker:
            self.early_talker = True
            self.session_score += self.server.tarpit.observe(self.keys, Observation.EARLY_TALK)
        self.conn.receive_data(data)
        self.pump()
        if self.conn.buffered > HIGH_WATER and (self.busy or self.blocked):
            # Input we cannot take now (a held reply, a delivery, a client that does not read our
            # replies): stop reading until the pump has caught up, so it waits in the kernel, not here.
            self.pause()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def resume(self) -> None:
        """Read again, unless a message's destination is still behind (handlers.py resumes it then)."""
        backlogged = self.incoming is not None and self.incoming.backlog > HIGH_WATER
        if self.paused and not backlogged and not self.blocked and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        # The client does not read what we write: answer nothing more (and read nothing more) until it
        # does, so replies to pipelined commands cannot pile up in our write buffer.
        self.blocked = True
        self.pause()

    def resume_writing(self) -> None:
        self.blocked = False
        self.pump()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # --- the pump: one event, one reply -------------------------------------------------------------------

    def pump(self) -> None:
        while not self.busy and not self.blocked and not self.conn.closed and self.transport is not None:
            event = self.conn.next_event()
            if isinstance(event, NeedData):
                self.resume()
                if self.conn.buffered and not self.conn.in_data and not self.command_since:
                    self.command_since = self.server.loop.time()  # a command line has begun
                    self._check_by(self.command_since + self.server.runtime.config.limits.command_timeout)
                return
            self.command_since = 0.0
            if isinstance(event, MessagePart):  # not answered: on its way while the rest arrives
                handlers.message_part(self, event)
                continue
            self.commands += 1
            handler, stage, self.label = handlers.HANDLERS[type(event)]
            self.stage = Stage.MESSAGE if self.conn.in_data else stage
            try:
                reply = handler(self, event)
            except Exception:  # a bug of ours: log it, tell the client to retry, show it nothing
                log.exception("internal error answering %s from %s", type(event).__name__, self.client)
                reply = replies.LOCAL_ERROR
            if reply is None:
                self.busy = True  # the handler answers later through finish
                return
            self._answer(reply)

    def _answer(self, proposed: Reply) -> None:
        reply, how = self._decide(proposed)
        if self.pending_mailbox is not None and reply.code == 250 and self.transaction is not None:
            self.transaction.add(self.pending_mailbox)
        self.pending_mailbox = None
        wire = self.conn.send(reply)
        if self.conn.in_data and not self.data_since:
            self._data_begins()
            handlers.message_begins(self)
        elif self.data_since and not self.conn.in_data:
            self._data_ends()
        self.server.stats.reply(reply.code, self.label)
        if isinstance(how, Disconnect):
            self.outcome = "too-many-errors"
        if self.server.executor.submit(self, reply, wire, how):
            self._written()
        else:
            self.busy = True

    def _data_begins(self) -> None:
        self.data_since, self.data_octets = self.server.loop.time(), 0
        self.server.receiving += 1  # its share of [limits] message_memory, until _data_ends
        self._check_by(self.data_since + self.server.runtime.config.limits.command_timeout)

    def _data_ends(self) -> None:
        self.data_since, self.data_octets = 0.0, 0
        self.server.receiving -= 1

    def _decide(self, proposed: Reply) -> tuple[Reply, Pass | Delay | Disconnect]:
        tarpit = self.server.tarpit
        is_error = proposed.code >= 500
        facts = SessionFacts(
            self.client,
            self.conn.authenticated,
            self.exempt,
            self.stage,
            errors=self.errors + is_error,
            delayed=self.delayed,
            early_talker=self.early_talker and self.stage is not Stage.QUIT,
            extra_score=self.listed,
            session_score=self.session_score,
        )
        reply, how = tarpit.decide(self.keys, facts, proposed)
        if reply.code >= 500:
            self.errors += 1
            trusted = self.conn.authenticated or self.exempt
            if reply is proposed and not trusted and self.observation is not handlers.OBSERVED:
                kind = self.observation if isinstance(self.observation, Observation) else Observation.ERROR
                self.session_score += tarpit.observe(self.keys, kind)
        self.observation = None
        return reply, how

    def finish(self, reply: Reply) -> None:
        """Answer an event whose reply was worked out off the loop, then go on with the input."""
        if self.transport is None or self.conn.closed:
            return
        self.busy = False
        self._answer(reply)
        self.pump()

    def released(self) -> None:
        """Called by the executor when a held reply has been written."""
        self.busy, self.greeted = False, True
        self.last_active = self.server.loop.time()
        self._written()
        self.pump()

    def _written(self) -> None:
        self.greeted = True
        if self.transport is None:
            return
        if self.conn.closed:
            self.transport.close()
        elif self.tls_upgrading:
            self.busy = True
            self.server.spawn(handlers.upgrade(self))
        elif self.server.draining and not self.conn.in_data and not self.busy:
            self.outcome = "shutdown"
            self.server.executor.cut(self, replies.SHUTTING_DOWN)

    # --- idle timeout ------------------------------------------------------------------------------------

    def _arm_idle(self, delay: float) -> None:
        self.idle = self.server.loop.call_later(delay, self._idle_check)

    def _idle_check(self) -> None:
        if self.transport is None:
            return
        loop = self.server.loop
        if self.busy:  # our own delay or work: the client is not idle
            self._arm_idle(self.server.idle_timeout)
            return
        waiting = Waiting(self.last_active, self.command_since, self.data_since, self.data_octets)
        reply, when = overdue(loop.time(), waiting, self.server.timeouts)
        if reply is None:
            self.idle = loop.call_at(when, self._idle_check)
            return
        self.outcome = "timeout" if reply is replies.IDLE_TIMEOUT else "too-slow"
        self.server.executor.cut(self, reply)

    def _check_by(self, when: float) -> None:
        """Make sure the deadline timer fires by ``when`` (a command or message data has begun)."""
        if self.idle is None or self.idle.when() > when:
            if self.idle is not None:
                self.idle.cancel()
            self.idle = self.server.loop.call_at(when, self._idle_check)
