"""The sans-IO SMTP server connection: ``receive_data(bytes)``, ``next_event()``, ``send(Reply) -> bytes``.

Theory of operation (after h11): the caller feeds raw bytes in, pulls events out one at a time, and answers
each event with exactly one reply through ``send``, which returns the bytes to write and applies the state
transition that reply implies (a RCPT answered 250 counts as a recipient; a DATA answered 354 starts the
message text). Because the next event is only produced after the previous one is answered, pipelined
commands are judged in order against the state their predecessors left. No asyncio, no sockets, no clock.
This module owns the state, the order of commands, message text and AUTH's exchange; what a command's
argument says is parsed in commands.py.

Invariants:
- A command line is at most ``command_line`` octets including CRLF; a longer one is discarded whole and
  answered 500, and memory never grows past the limit while waiting for its end.
- After STARTTLS is answered 220, every byte already buffered is discarded and the session state is reset
  (CVE-2011-0411: commands injected in plaintext before the handshake must never run).
- A 221 or 421 reply closes the connection; nothing is parsed after it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

from smtp_tarpit.protocol import commands, data, replies
from smtp_tarpit.protocol.events import (
    NEED_DATA,
    Answer,
    AuthCredentials,
    Data,
    Event,
    Helo,
    Help,
    Mail,
    Message,
    MessagePart,
    NeedData,
    Noop,
    Problem,
    Quit,
    Rcpt,
    Rset,
    StartTls,
)
from smtp_tarpit.protocol.replies import Reply
from smtp_tarpit.protocol.state import VERBS, State, Verb, lookup

SASL_LINE_LIMIT = 12288  # RFC 4954 section 4: a SASL response line may be this long


class _TooLong:
    __slots__ = ()


TOO_LONG = _TooLong()


class LocalProtocolError(RuntimeError):
    """The caller (our own session code) used the connection out of order: a bug on our side."""


@dataclass(slots=True)
class Limits:
    command_line: int = 512
    text_line: int = 1000
    message_size: int = 10 * 1024 * 1024
    recipients: int = 100
    reject_bare_newline: bool = False
    junk_commands: int = 100  # NOOP, RSET, VRFY, HELP without a message accepted in between; 0 = no limit
    data_part: int = 64 * 1024  # message text buffered before it goes out as a MessagePart


@dataclass(slots=True)
class Features:
    """What this connection may offer; the session sets these from config and the peer's address."""

    starttls: bool = False  # a TLS context is configured
    auth: bool = False  # a users file is configured
    plaintext_auth: bool = False  # AUTH allowed without TLS (loopback peer and the setting on)


class SmtpConnection:
    __slots__ = (
        "_after",
        "_buf",
        "_data_limits",
        "_data_octets",
        "_data_refusal",
        "_discarding",
        "_junk",
        "_line_start",
        "_pending",
        "_sasl_mechanism",
        "_sasl_user",
        "_scan",
        "authenticated",
        "extended",
        "features",
        "helo_name",
        "limits",
        "recipients",
        "smtputf8",
        "state",
        "tls_active",
    )

    def __init__(self, limits: Limits, features: Features) -> None:
        self.limits = limits
        self.features = features
        self._data_limits = data.DataLimits(limits.message_size, limits.text_line, limits.reject_bare_newline)
        self.state = State.INIT
        self._buf = bytearray()
        self._scan = 0
        self._discarding = False
        self._data_octets = 0  # raw octets of the message already given out in parts
        self._data_refusal: Answer | None = None  # the message's answer is already known: a refusal
        self._line_start = True  # the buffer begins at the start of a line of message text
        self._junk = 0
        self._pending: Event | None = None
        self._after: State | None = None
        self._sasl_mechanism = ""
        self._sasl_user = ""
        self.helo_name = ""
        self.extended = False
        self.tls_active = False
        self.authenticated = False
        self.recipients = 0
        self.smtputf8 = False

    # --- input -------------------------------------------------------------------------------------------

    def receive_data(self, chunk: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self._buf += chunk
        refused = self.state is State.DATA and self._data_refusal is not None
        if refused and data.find_end(self._buf, 0, at_start=self._line_start) < 0:
            # A refused message: keep only the tail that may hold the start of the end marker (never the
            # marker itself, nor the commands after it, when several chunks arrive before next_event).
            self._drop_text()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def in_data(self) -> bool:
        return self.state is State.DATA

    def next_event(self) -> Event | NeedData:
        if self._pending is not None:
            raise LocalProtocolError("the previous event has not been answered")
        if self.state is State.CLOSED:
            return NEED_DATA
        if self.state is State.DATA:
            event: Event | None = self._read_data()
        else:
            line = self._read_line()
            event = None if line is None else self._line_event(line)
        if event is None:
            return NEED_DATA
        if not isinstance(event, MessagePart):  # a part is not answered: the message is, at its end
            self._pending = event
        return event

    def _read_line(self) -> bytes | _TooLong | None:
        limit = SASL_LINE_LIMIT if self.state is State.SASL else self.limits.command_line
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > limit:
                self._discarding = True
                del self._buf[:]
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        if self._discarding or end + 1 > limit:
            self._discarding = False
            return TOO_LONG
        # A bare LF ends a command line too (as in Postfix): only DATA is judged strictly on CRLF.
        return line[:-1] if line.endswith(b"\r") else line

    def _read_data(self) -> Event | None:
        # The buffer begins at the start of a line until refused text is dropped (even if the first chunk
        # was only "." and the scan has moved on).
        end = data.find_end(self._buf, self._scan, at_start=self._line_start)
        if end >= 0:
            body = bytes(self._buf[:end])
            del self._buf[: end + 3]
            refusal, total = self._data_refusal, self._data_octets + len(body)
            self._data_refusal, self._data_octets, self._line_start, self._scan = None, 0, True, 0
            if refusal is None or total > self.limits.message_size:  # the size answer comes first
                return data.finish(body, total, self._data_limits)
            return refusal
        self._scan = len(self._buf)
        if self._data_refusal is not None:
            self._drop_text()
        elif self._data_octets + len(self._buf) > self.limits.message_size + 5:
            self._refuse_text(data.too_big(self._data_limits))
        elif len(self._buf) >= self.limits.data_part:
            return self._message_part()
        return None

    def _message_part(self) -> Event | None:
        """Give out the whole lines buffered so far (all but the last, incomplete one)."""
        cut = self._buf.rfind(b"\r\n") + 2
        if cut < 2:
            if len(self._buf) > self.limits.text_line:  # one line, already too long: no need to wait
                self._refuse_text(data.line_too_long(self._data_limits))
            return None
        raw = bytes(self._buf[:cut])
        del self._buf[:cut]
        # The rest begins a line (a final "." there still ends the text) and was scanned already.
        self._line_start, self._scan = True, len(self._buf)
        self._data_octets += len(raw)
        event = data.part(raw, self._data_limits)
        if isinstance(event, Answer):
            self._refuse_text(event)
            return None
        return event

    def _refuse_text(self, refusal: Answer) -> None:
        self._data_refusal = refusal
        self._drop_text()

    def _drop_text(self) -> None:
        if len(self._buf) > 4:  # else nothing goes, and the buffer may still begin a line
            self._data_octets += len(self._buf) - 4  # still counted: the size answer comes first
            del self._buf[:-4]
            self._line_start = False
        self._scan = 0

    # --- commands ----------------------------------------------------------------------------------------

    def _line_event(self, line: bytes | _TooLong) -> Event:
        if isinstance(line, _TooLong):
            limit = SASL_LINE_LIMIT if self.state is State.SASL else self.limits.command_line
            return Answer(replies.command_line_too_long(limit), Problem.LINE_TOO_LONG)
        if b"\x00" in line:
            return Answer(replies.NUL_IN_COMMAND, Problem.SYNTAX)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return Answer(replies.INVALID_UTF8, Problem.SYNTAX)
        if self.state is State.SASL:
            return self._sasl_step(text)
        word, _, argument = text.partition(" ")
        # ASCII only: str.upper() would turn lookalikes such as "MA\u0131L" into a verb.
        verb = VERBS.get(word.upper().encode()) if word.isascii() else None
        if verb is None:
            if word.upper() in _NOT_SMTP:
                # An HTTP request or proxy probe (Postfix's smtpd_forbidden_commands): nobody who speaks
                # SMTP sends these; close at once rather than answer it command after command.
                return Answer(replies.NOT_SMTP, Problem.UNKNOWN_COMMAND)
            return Answer(replies.UNKNOWN_COMMAND, Problem.UNKNOWN_COMMAND)
        refusal, after = lookup(self.state, verb)
        if verb is Verb.STARTTLS and refusal is None:
            refusal = self._starttls_refusal()
        if refusal is not None:
            problem = Problem.NOT_IMPLEMENTED if refusal is replies.NOT_IMPLEMENTED else Problem.SEQUENCE
            return Answer(refusal, problem)
        if verb in _JUNK:
            # Postfix's smtpd_junk_command_limit: a client that only keeps the line open with commands
            # that carry no mail is closed. A message accepted resets the count (a busy reused connection
            # sends RSET between messages).
            self._junk += 1
            if self.limits.junk_commands and self._junk > self.limits.junk_commands:
                return Answer(replies.TOO_MUCH_JUNK, Problem.JUNK)
        self._after = after
        return _PARSERS[verb](self, argument.strip(" "))

    def _starttls_refusal(self) -> Reply | None:
        if not self.features.starttls:
            return replies.NOT_IMPLEMENTED
        if self.tls_active:
            return replies.TLS_ALREADY_ACTIVE
        return None

    # --- AUTH (RFC 4954; PLAIN per RFC 4616, LOGIN as every client sends it) ------------------------------

    @property
    def auth_offered(self) -> bool:
        return self.features.auth and (self.tls_active or self.features.plaintext_auth)

    def _parse_auth(self, argument: str) -> Event:
        if self.authenticated:
            return Answer(replies.ALREADY_AUTHENTICATED, Problem.SEQUENCE)
        if not self.features.auth:
            return Answer(replies.NOT_IMPLEMENTED, Problem.NOT_IMPLEMENTED)
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in ("PLAIN", "LOGIN") or " " in initial:
            return Answer(replies.AUTH_MECHANISM_UNKNOWN, Problem.AUTH_PROTOCOL)
        if not self.auth_offered:
            return Answer(replies.AUTH_ENCRYPTION_REQUIRED, Problem.AUTH_PROTOCOL)
        self._sasl_mechanism, self._sasl_user = mechanism, ""
        if not initial:
            first = "" if mechanism == "PLAIN" else "VXNlcm5hbWU6"  # base64("Username:")
            return self._challenge(first)
        return self._sasl_step(initial)

    def _challenge(self, text: str) -> Event:
        self._after = State.SASL
        return Answer(replies.sasl_challenge(text), Problem.CHALLENGE)

    def _sasl_step(self, text: str) -> Event:
        self._after = State.READY
        if text == "*":
            return Answer(replies.AUTH_CANCELLED, Problem.AUTH_PROTOCOL)
        try:
            decoded = base64.b64decode(text, validate=True).decode("utf-8") if text != "=" else ""
        except ValueError:  # binascii.Error, UnicodeDecodeError and non-ASCII text are all ValueErrors
            return Answer(replies.AUTH_BAD_ENCODING, Problem.AUTH_PROTOCOL)
        if self._sasl_mechanism == "LOGIN" and not self._sasl_user:
            self._sasl_user = decoded or "\x00"
            return self._challenge("UGFzc3dvcmQ6")  # base64("Password:")
        if self._sasl_mechanism == "LOGIN":
            return AuthCredentials("LOGIN", self._sasl_user.strip("\x00"), decoded, "")
        parts = decoded.split("\x00")
        if len(parts) != 3:
            return Answer(replies.AUTH_BAD_ENCODING, Problem.AUTH_PROTOCOL)
        return AuthCredentials("PLAIN", parts[1], parts[2], parts[0])

    # --- output ------------------------------------------------------------------------------------------

    def extensions(self) -> tuple[str, ...]:
        found = [
            "PIPELINING",
            f"SIZE {self.limits.message_size}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
        ]
        if self.features.starttls and not self.tls_active:
            found.append("STARTTLS")
        if self.auth_offered and not self.authenticated:
            found.append("AUTH PLAIN LOGIN")
        return tuple(found)

    def send(self, reply: Reply) -> bytes:
        """Answer the pending event (or send the greeting or an unsolicited 421) and return the bytes."""
        event, self._pending = self._pending, None
        if reply.code == 421 or (isinstance(event, Quit) and reply.code == 221):
            self._close()
        elif event is None:
            if reply.code != 220:
                raise LocalProtocolError("only the greeting or a 421 may be sent unprompted")
        else:
            _TRANSITIONS.get(type(event), SmtpConnection._plain_transition)(self, event, reply)
        return reply.wire

    def _close(self) -> None:
        self.state = State.CLOSED
        del self._buf[:]

    def _plain_transition(self, event: Event, reply: Reply) -> None:
        after, self._after = self._after, None
        if after is State.SASL or self.state is State.SASL:
            # A SASL exchange goes on only while the server keeps challenging; anything else ends it.
            self.state = State.SASL if after is State.SASL and reply.code == 334 else State.READY
            return
        if reply.code < 400 and after is not None:
            if after in (State.INIT, State.READY):
                self._reset_transaction()
            self.state = after

    def _helo_transition(self, event: Event, reply: Reply) -> None:
        assert isinstance(event, Helo)
        self._after = None
        if reply.code < 400:
            self._reset_transaction()
            self.state, self.helo_name, self.extended = State.READY, event.name, event.extended

    def _mail_transition(self, event: Event, reply: Reply) -> None:
        assert isinstance(event, Mail)
        self._plain_transition(event, reply)
        if reply.code < 400:
            self.smtputf8 = event.smtputf8

    def _rcpt_transition(self, event: Event, reply: Reply) -> None:
        self._plain_transition(event, reply)
        if reply.code < 400:
            self.recipients += 1

    def _message_transition(self, event: Event, reply: Reply) -> None:
        self._after = None
        if reply.code == 250:
            self._junk = 0
        self._reset_transaction()
        self.state = State.READY

    def _answer_transition(self, event: Event, reply: Reply) -> None:
        if self.state is State.DATA:
            self._message_transition(event, reply)
        else:
            self._plain_transition(event, reply)

    def _starttls_transition(self, event: Event, reply: Reply) -> None:
        self._after = None
        if reply.code == 220:
            del self._buf[:]  # CVE-2011-0411: nothing sent in plaintext survives the handshake
            self._reset_transaction()
            self.state, self.tls_active, self.helo_name, self.extended = State.INIT, True, "", False
            self.authenticated = False  # RFC 3207 4.2: forget all that was learnt before the handshake

    def _auth_transition(self, event: Event, reply: Reply) -> None:
        self._after = None
        self.state = State.READY
        self.authenticated = reply.code == 235

    def _reset_transaction(self) -> None:
        self.recipients = 0
        self.smtputf8 = False


_JUNK = frozenset((Verb.NOOP, Verb.RSET, Verb.VRFY, Verb.HELP))
_NOT_SMTP = frozenset(("GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS"))

# Each command's argument parser (commands.py), given what it needs of the connection.
_PARSERS: dict[Verb, Callable[[SmtpConnection, str], Event]] = {
    Verb.HELO: lambda conn, argument: commands.helo(argument, extended=False),
    Verb.EHLO: lambda conn, argument: commands.helo(argument, extended=True),
    Verb.MAIL: lambda conn, argument: commands.mail(argument, conn.extended, conn.limits.message_size),
    Verb.RCPT: lambda conn, argument: commands.rcpt(
        argument, conn.smtputf8, conn.recipients >= conn.limits.recipients
    ),
    Verb.DATA: lambda conn, argument: commands.no_argument(argument, Data()),
    Verb.RSET: lambda conn, argument: commands.no_argument(argument, Rset()),
    Verb.NOOP: lambda conn, argument: Noop(),
    Verb.QUIT: lambda conn, argument: Quit(),
    Verb.VRFY: lambda conn, argument: commands.vrfy(argument),
    Verb.HELP: lambda conn, argument: Help(),
    Verb.STARTTLS: lambda conn, argument: commands.no_argument(argument, StartTls()),
    Verb.AUTH: SmtpConnection._parse_auth,
}

_TRANSITIONS: dict[type, Callable[[SmtpConnection, Event, Reply], None]] = {
    Helo: SmtpConnection._helo_transition,
    Mail: SmtpConnection._mail_transition,
    Rcpt: SmtpConnection._rcpt_transition,
    Message: SmtpConnection._message_transition,
    Answer: SmtpConnection._answer_transition,
    StartTls: SmtpConnection._starttls_transition,
    AuthCredentials: SmtpConnection._auth_transition,
}
