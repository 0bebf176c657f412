"""Events the SMTP core produces from the client's bytes (h11 style: frozen, slotted values).

Every event except NEED_DATA expects exactly one reply through ``SmtpConnection.send`` before the next event
is produced. ``Answer`` is an event whose reply the core already knows (syntax errors, bad sequence, SASL
challenges, over-limit messages); the session passes it on, and the policy may still delay or replace it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from smtp_tarpit.protocol.address import Address
from smtp_tarpit.protocol.replies import Reply


class Problem(enum.Enum):
    """Why the core answered on its own: what the policy observes about the client."""

    # Members are singletons compared by identity: hash them so too (Enum's own __hash__ is Python code,
    # and these are dictionary keys on every command).
    __hash__ = object.__hash__

    SYNTAX = "syntax"
    SEQUENCE = "sequence"
    UNKNOWN_COMMAND = "unknown-command"
    NOT_IMPLEMENTED = "not-implemented"
    LINE_TOO_LONG = "line-too-long"
    MESSAGE_TOO_BIG = "message-too-big"
    TOO_MANY_RECIPIENTS = "too-many-recipients"
    BARE_NEWLINE = "bare-newline"
    AUTH_PROTOCOL = "auth-protocol"
    CHALLENGE = "challenge"  # not an error: a SASL 334 step
    JUNK = "junk"  # too many commands that carry no mail: 421


@dataclass(frozen=True, slots=True)
class Helo:
    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class Mail:
    sender: Address | None  # None is the null reverse-path <>
    size: int | None
    smtputf8: bool
    eight_bit: bool = False  # BODY=8BITMIME declared


@dataclass(frozen=True, slots=True)
class Rcpt:
    recipient: Address


@dataclass(frozen=True, slots=True)
class Data:
    pass


@dataclass(frozen=True, slots=True)
class MessagePart:
    """The first lines of a message still arriving (dot-unstuffed, every line ending in CRLF), so that it
    can go on to disk or downstream while the rest comes. Not answered: the message's answer goes to its
    ``Message`` (or to the ``Answer`` that refuses it, which means every part before it is void)."""

    content: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """The end of a message: its last lines (all of it when it came in one go; after ``MessagePart``
    events, what follows them), dot-unstuffed, every line ending in CRLF, the whole within every limit."""

    content: bytes


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Vrfy:
    argument: str


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class StartTls:
    pass


@dataclass(frozen=True, slots=True)
class AuthCredentials:
    mechanism: str
    username: str
    password: str
    authzid: str


@dataclass(frozen=True, slots=True)
class Answer:
    reply: Reply
    problem: Problem


class NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()

Event = (
    Helo
    | Mail
    | Rcpt
    | Data
    | Message
    | MessagePart
    | Rset
    | Noop
    | Quit
    | Vrfy
    | Help
    | StartTls
    | AuthCredentials
    | Answer
)
