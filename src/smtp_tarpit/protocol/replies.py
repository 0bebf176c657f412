"""The catalogue of every SMTP reply the server can send.

Invariants:
- No reply text is written anywhere else in the code base: callers pick a constant or call one of the few
  constructors below (greeting, EHLO, queued). A test scans ``src/`` for stray reply strings.
- Reply texts never contain anything the client sent and never contain internals (exception text, paths):
  the only variable parts are our own hostname, our own message id and numbers from our own config.
- Every 2xx/4xx/5xx reply carries an RFC 3463 enhanced status code, except the greeting and the HELO/EHLO
  replies (RFC 2034 section 3 excludes those two); 3xx replies carry none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: a three-digit code, an optional enhanced code and one or more lines of text."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]
    wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Rendered once: replies are sent far more often than they are made.
        object.__setattr__(self, "wire", _render(self.code, self.enhanced, self.lines))

    @property
    def text(self) -> str:
        return " ".join(self.lines)


def _render(code: int, enhanced: str | None, lines: tuple[str, ...]) -> bytes:
    prefix = f"{enhanced} " if enhanced else ""
    out = []
    for i, line in enumerate(lines):
        sep = " " if i == len(lines) - 1 else "-"
        out.append(f"{code}{sep}{prefix}{line}\r\n")
    return "".join(out).encode("utf-8")


def _r(code: int, enhanced: str | None, *lines: str) -> Reply:
    return Reply(code, enhanced, lines)


# --- constructors for the replies with a variable part (our own data only) ---------------------------------


@lru_cache(maxsize=64)  # the same few hostnames and extension lists, every session
def greeting(hostname: str, teaser: bool = False) -> Reply:
    # The teaser form has two lines: the first goes out at once, the last after [greet] pause, and a
    # client that talks before the last line is an early talker (as Postfix's postscreen does it).
    if teaser:
        return _r(220, None, f"{hostname} ESMTP", f"{hostname} ESMTP smtp-tarpit")
    return _r(220, None, f"{hostname} ESMTP smtp-tarpit")


@lru_cache(maxsize=64)  # the same few hostnames and extension lists, every session
def helo(hostname: str) -> Reply:
    return _r(250, None, hostname)


@lru_cache(maxsize=64)  # the same few hostnames and extension lists, every session
def ehlo(hostname: str, extensions: tuple[str, ...]) -> Reply:
    return Reply(250, None, (hostname, *extensions))


def queued(message_id: str) -> Reply:
    return _r(250, "2.0.0", f"Ok: queued as {message_id}")


def downstream_refused(code: int, enhanced: str) -> Reply:
    # The downstream's code class and enhanced code pass through; its text does not (it may show internals).
    return _r(code, enhanced, "Refused by the receiving mail system")


@lru_cache(maxsize=64)  # the same few hostnames and extension lists, every session
def bye(hostname: str) -> Reply:
    return _r(221, "2.0.0", f"{hostname} closing connection")


def sasl_challenge(base64_text: str) -> Reply:
    # RFC 4954: "334 " followed by the base64 challenge, nothing else on the line.
    return _r(334, None, base64_text)


def command_line_too_long(limit: int) -> Reply:
    return _r(500, "5.5.2", f"Line too long (limit {limit} octets)")


def text_line_too_long(limit: int) -> Reply:
    return _r(554, "5.6.0", f"Message refused: a line is longer than {limit} octets")


def message_too_big(limit: int) -> Reply:
    return _r(552, "5.3.4", f"Message size exceeds fixed limit of {limit} octets")


# --- fixed replies ------------------------------------------------------------------------------------------

OK = _r(250, "2.0.0", "Ok")
SENDER_OK = _r(250, "2.1.0", "Sender ok")
RECIPIENT_OK = _r(250, "2.1.5", "Recipient ok")
START_DATA = _r(354, None, "End data with <CR><LF>.<CR><LF>")
VRFY_CANNOT = _r(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = _r(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
    "See RFC 5321 for details",
)
READY_FOR_TLS = _r(220, "2.0.0", "Ready to start TLS")
AUTH_OK = _r(235, "2.7.0", "Authentication successful")

# 4xx: temporary; the client keeps the message and tries again.
TOO_MANY_RECIPIENTS = _r(452, "4.5.3", "Too many recipients")
LOCAL_ERROR = _r(451, "4.3.0", "Temporary local problem, please try again later")
TARGET_UNAVAILABLE = _r(451, "4.4.1", "Mail system temporarily unreachable, please try again later")
SERVICE_UNAVAILABLE = _r(421, "4.4.1", "Mail system temporarily unreachable, please try again later")
IDLE_TIMEOUT = _r(421, "4.4.2", "Idle timeout, closing connection")
SHUTTING_DOWN = _r(421, "4.3.2", "Service shutting down, please try again later")
TOO_MANY_CONNECTIONS = _r(421, "4.7.0", "Too many connections, please try again later")
TOO_MANY_ERRORS = _r(421, "4.7.0", "Too many errors, closing connection")
TOO_MUCH_JUNK = _r(421, "4.7.0", "Too many commands without mail, closing connection")
COMMAND_TOO_SLOW = _r(421, "4.4.2", "Command not completed in time, closing connection")
DATA_TOO_SLOW = _r(421, "4.4.2", "Message data too slow, closing connection")
INSUFFICIENT_STORAGE = _r(452, "4.3.1", "Insufficient system storage, please try again later")
TOO_MANY_MESSAGES = _r(451, "4.3.2", "Too many messages in progress, please try again later")
SERVER_BUSY = _r(421, "4.7.0", "Server busy, please try again later")
TRY_AGAIN_LATER = _r(450, "4.7.1", "Try again later")  # the harvest defence's uniform answer
DEFER_MESSAGE = _r(451, "4.7.1", "Try again later")
RECIPIENT_UNVERIFIED = _r(450, "4.4.3", "Recipient address verification failed, please try again later")
TLS_UNAVAILABLE = _r(454, "4.7.0", "TLS not available, please try again later")
AUTH_TEMPORARY_FAILURE = _r(454, "4.7.0", "Temporary authentication failure")

# 5xx: permanent; these are what the seed tar pit delays.
UNKNOWN_COMMAND = _r(500, "5.5.1", "Command unrecognized")
NOT_SMTP = _r(421, "4.7.0", "This is an SMTP server, not a web server or proxy; closing connection")
NOT_IMPLEMENTED = _r(502, "5.5.1", "Command not implemented")
NEED_HELO = _r(503, "5.5.1", "Send HELO or EHLO first")
NESTED_MAIL = _r(503, "5.5.1", "Sender already specified")
NEED_MAIL = _r(503, "5.5.1", "Need MAIL command first")
NEED_RCPT = _r(503, "5.5.1", "Need RCPT command first")
NO_VALID_RECIPIENTS = _r(554, "5.5.1", "No valid recipients")
IN_TRANSACTION = _r(503, "5.5.1", "Not allowed during a mail transaction")
ALREADY_AUTHENTICATED = _r(503, "5.5.1", "Already authenticated")
TLS_ALREADY_ACTIVE = _r(503, "5.5.1", "TLS already active")
SYNTAX_HELO = _r(501, "5.5.4", "Syntax: HELO hostname")
SYNTAX_EHLO = _r(501, "5.5.4", "Syntax: EHLO hostname")
SYNTAX_MAIL = _r(501, "5.5.4", "Syntax: MAIL FROM:<address>")
SYNTAX_RCPT = _r(501, "5.5.4", "Syntax: RCPT TO:<address>")
SYNTAX_VRFY = _r(501, "5.5.4", "Syntax: VRFY address")
NO_ARGUMENTS = _r(501, "5.5.4", "No arguments allowed")
NUL_IN_COMMAND = _r(501, "5.5.2", "NUL character not allowed in commands")
INVALID_UTF8 = _r(501, "5.5.2", "Invalid characters in command")
BAD_SENDER_SYNTAX = _r(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = _r(501, "5.1.3", "Bad recipient address syntax")
NULL_RECIPIENT = _r(501, "5.1.3", "Null recipient not allowed")
UNKNOWN_PARAMETER = _r(555, "5.5.4", "Unsupported MAIL FROM or RCPT TO parameter")
NON_ASCII_ADDRESS = _r(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
SIZE_DECLARED_TOO_BIG = _r(552, "5.3.4", "Declared message size exceeds fixed limit")
EARLY_TALKER = _r(554, "5.5.1", "Protocol error: talking before the greeting")
UNKNOWN_USER = _r(550, "5.1.1", "Recipient address rejected: user unknown")
RELAY_DENIED = _r(554, "5.7.1", "Relay access denied")
BARE_NEWLINE = _r(554, "5.5.2", "Message refused: bare <CR> or <LF> in message text")
NUL_IN_TEXT = _r(554, "5.6.0", "Message refused: NUL character in message text")
AUTH_MECHANISM_UNKNOWN = _r(504, "5.5.4", "Unrecognized authentication type")
AUTH_ENCRYPTION_REQUIRED = _r(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_CANCELLED = _r(501, "5.7.0", "Authentication cancelled")
AUTH_BAD_ENCODING = _r(501, "5.5.2", "Cannot decode authentication response")
AUTH_FAILED = _r(535, "5.7.8", "Authentication credentials invalid")
