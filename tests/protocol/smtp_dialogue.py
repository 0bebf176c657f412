"""Test helpers for the sans-IO core: a canonical responder and a driver that turns bytes into bytes.

The responder stands in for the session: it answers each event the way a plain, tarpit-free server would
(recipients known from a fixed set, credentials alice/secret). ``Dialogue`` feeds client bytes into an
``SmtpConnection``, answers every event with the responder and returns the bytes the server would write.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from smtp_tarpit.protocol import NEED_DATA, Features, Limits, SmtpConnection, replies
from smtp_tarpit.protocol.connection import SASL_LINE_LIMIT
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
from smtp_tarpit.protocol.state import State

HOST = "mx.example.test"
KNOWN_RECIPIENTS = frozenset({"alice@example.test", "bob@example.test", "postmaster"})
USER, PASSWORD = "alice", "secret"
MESSAGE_ID = "TESTID"
ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")

Responder = Callable[[SmtpConnection, Event], Reply]


def canonical_reply(conn: SmtpConnection, event: Event) -> Reply:
    """The reply a plain server without tar pit gives to ``event``."""
    match event:
        case Helo(extended=True):
            return replies.ehlo(HOST, conn.extensions())
        case Helo():
            return replies.helo(HOST)
        case Mail():
            return replies.SENDER_OK
        case Rcpt(recipient=recipient):
            return replies.RECIPIENT_OK if recipient.key in KNOWN_RECIPIENTS else replies.UNKNOWN_USER
        case Data():
            return replies.START_DATA
        case Message():
            return replies.queued(MESSAGE_ID)
        case Rset() | Noop():
            return replies.OK
        case Quit():
            return replies.bye(HOST)
        case Vrfy():
            return replies.VRFY_CANNOT
        case Help():
            return replies.HELP
        case StartTls():
            return replies.READY_FOR_TLS
        case AuthCredentials(username=username, password=password):
            return replies.AUTH_OK if (username, password) == (USER, PASSWORD) else replies.AUTH_FAILED
        case Answer(reply=reply):
            return reply
    raise AssertionError(f"unexpected event {event!r}")


def with_overrides(overrides: dict[type, Reply]) -> Responder:
    """The canonical responder, except for the event types in ``overrides``."""

    def respond(conn: SmtpConnection, event: Event) -> Reply:
        return overrides.get(type(event)) or canonical_reply(conn, event)

    return respond


@dataclass
class Dialogue:
    """One client's session with the core: ``feed(bytes) -> bytes`` answered by a responder."""

    limits: Limits = field(default_factory=Limits)
    features: Features = field(default_factory=Features)
    responder: Responder = canonical_reply
    greet: bool = True
    events: list[Event] = field(default_factory=list)
    conn: SmtpConnection = field(init=False)
    greeting: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        self.conn = SmtpConnection(self.limits, self.features)
        if self.greet:
            self.greeting = self.conn.send(replies.greeting(HOST))

    def feed(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        return self.drain()

    def drain(self) -> bytes:
        out = bytearray()
        while (event := self.conn.next_event()) is not NEED_DATA:
            self.events.append(event)
            if not isinstance(event, MessagePart):  # a part is not answered
                out += self.conn.send(self.responder(self.conn, event))
        return bytes(out)

    def say(self, data: bytes) -> list[str]:
        """Feed ``data``; return the reply lines written, without their CRLF."""
        return reply_lines(self.feed(data))

    def codes(self, data: bytes) -> list[str]:
        """Feed ``data``; return '<code> <enhanced code>' (or '<code>' if it has none) of each reply."""
        return [_code(line) for line in self.say(data) if line[3:4] == " "]

    @property
    def messages(self) -> list[bytes]:
        """Every message accepted whole: its parts and its end joined (a refused message's parts are void)."""
        found, parts = [], bytearray()
        for event in self.events:
            if isinstance(event, MessagePart):
                parts += event.content
            elif isinstance(event, Message):
                found.append(bytes(parts) + event.content)
                parts.clear()
            elif isinstance(event, Answer):  # parts are only ever followed by their Message or a refusal
                parts.clear()
        return found


def _code(line: str) -> str:
    words = line.split(" ")
    return " ".join(words[:2]) if len(words) > 1 and ENHANCED.fullmatch(words[1]) else words[0]


def reply_lines(wire: bytes) -> list[str]:
    text = wire.decode("utf-8")
    assert text == "" or text.endswith("\r\n"), text
    return text.split("\r\n")[:-1]


TRANSACTION = b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"


def in_data(limits: Limits | None = None, features: Features | None = None) -> Dialogue:
    """A dialogue that has been greeted, said EHLO, and had its DATA answered 354."""
    dialogue = Dialogue(limits or Limits(), features or Features())
    out = dialogue.feed(b"EHLO client.example\r\n" + TRANSACTION)
    assert out.endswith(replies.START_DATA.wire), out
    assert dialogue.conn.in_data
    return dialogue


# --- ground truth shared with the hostile suite (tests/hostile) ----------------------------------------

_ESCAPE = re.compile(r"\\(?:x([0-9A-Fa-f]{2})|\{(\d+)\*([^}]*)\}|(.))")
_SIMPLE = {"r": b"\r", "n": b"\n", "t": b"\t", "\\": b"\\"}


def decode(text: str) -> bytes:
    """A transcript's text as octets: the escapes ``\\r \\n \\t \\\\ \\xHH`` and ``\\{N*text}`` (text N times)."""
    out = bytearray()
    position = 0
    for match in _ESCAPE.finditer(text):
        out += text[position : match.start()].encode("utf-8")
        hex_octet, count, repeated, simple = match.groups()
        if hex_octet is not None:
            out.append(int(hex_octet, 16))
        elif count is not None:
            out += decode(repeated) * int(count)
        elif simple in _SIMPLE:
            out += _SIMPLE[simple]
        else:
            raise ValueError(f"unknown escape \\{simple} in {text!r}")
        position = match.end()
    out += text[position:].encode("utf-8")
    return bytes(out)


def expected_outcome(body: bytes, limits: Limits) -> Event:
    """What the text of one DATA section (up to the CRLF before the final dot) must become."""
    if len(body) > limits.message_size:
        return Answer(replies.message_too_big(limits.message_size), Problem.MESSAGE_TOO_BIG)
    lines = body.split(b"\r\n")[:-1]
    for line in lines:  # the first offending line decides (a message may come in parts)
        if len(line) + 2 > limits.text_line:
            return Answer(replies.text_line_too_long(limits.text_line), Problem.MESSAGE_TOO_BIG)
        if limits.reject_bare_newline and (b"\r" in line or b"\n" in line):
            return Answer(replies.BARE_NEWLINE, Problem.BARE_NEWLINE)
        if limits.reject_bare_newline and b"\x00" in line:
            return Answer(replies.NUL_IN_TEXT, Problem.BARE_NEWLINE)
    unstuffed = (line[1:] if line.startswith(b".") else line for line in lines)
    return Message(b"".join(re.sub(rb"\r|\n", b"\r\n", line) + b"\r\n" for line in unstuffed))


END = b"\r\n.\r\n"  # CRLF.CRLF: the only end of message text


def buffer_bound(conn: SmtpConnection) -> int:
    """The most input the core may keep buffered in its current state."""
    if conn.in_data:
        return conn.limits.message_size + len(END)
    if conn.state is State.SASL:
        return SASL_LINE_LIMIT
    return conn.limits.command_line
