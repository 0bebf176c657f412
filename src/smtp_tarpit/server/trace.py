"""Trace headers prepended to every accepted message, and client text made safe for logs and headers.

Invariants: nothing the client typed reaches a header or a log line with a control character, a line
break or (in a header comment) an unbalanced parenthesis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from functools import lru_cache

from smtp_tarpit.delivery import Envelope

_COMMENT_UNSAFE = str.maketrans("()\\", "???")


def printable(text: str, limit: int = 128) -> str:
    """Client-supplied text made safe for a log line or a header: no control or separator characters."""
    if text.isprintable() and " " not in text:  # the common case, checked in C
        return text[:limit]
    return "".join(c if c.isprintable() and c != " " else "?" for c in text[:limit])


@dataclass(frozen=True, slots=True)
class Trace:
    """What the Received header says about how the message came in."""

    helo: str
    client: str
    extended: bool
    tls: bool
    authenticated: bool
    smtputf8: bool


def protocol_name(trace: Trace) -> str:
    """RFC 3848's "with" keyword: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, or UTF8SMTP (RFC 6531)."""
    if not trace.extended:
        return "SMTP"
    if trace.smtputf8:
        return "UTF8SMTP"
    return "ESMTP" + ("S" if trace.tls else "") + ("A" if trace.authenticated else "")


def _date_now() -> str:
    return _date_of(int(time.time()))


@lru_cache(maxsize=2)
def _date_of(second: int) -> str:
    """RFC 5322 date of one second, local time (made once a second: it is in every header)."""
    return format_datetime(datetime.fromtimestamp(second).astimezone())


def trace_headers(trace: Trace, hostname: str, envelope: Envelope, *, return_path: bool = True) -> bytes:
    helo = printable(trace.helo, limit=255).translate(_COMMENT_UNSAFE)
    recipients = envelope.recipients
    recipient = f"\r\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    stamp = _date_now()
    return (
        (f"Return-Path: <{envelope.sender}>\r\n" if return_path else "")
        + f"Received: from {helo} ([{trace.client}])\r\n"
        f"\tby {hostname} (smtp-tarpit) with {protocol_name(trace)} id {envelope.message_id}{recipient};\r\n"
        f"\t{stamp}\r\n"
    ).encode()
