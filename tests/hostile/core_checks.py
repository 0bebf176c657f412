"""What must hold for the sans-IO core on any input whatever: the checks shared by the hypothesis properties
(test_properties.py) and the atheris fuzz target (fuzz/fuzz_core.py).

``check_stream(stream, cuts, limits)`` feeds one client byte stream three ways (whole, split at ``cuts``,
one octet at a time), answering each event as a plain server would, and asserts:
1. no exception escapes the core;
2. how the bytes are split never changes the events (a message streamed in parts counts as its parts and
   its end joined) nor a single byte of output;
3. every reply is well formed: three digits, space or hyphen, text, CRLF, at most 512 octets a line, one
   code per reply, the enhanced code (when present) of the reply's class on every line, no internals;
4. each DATA section ends at its first CRLF "." CRLF (or a lone "." line right after the 354) and nowhere
   else, with exactly one outcome: the complete text, unstuffed and normalised (never a part of it), or
   the refusal its size, its lines or its bare line ends earn; no message outside a DATA section;
5. the core's buffer stays within its bound whenever every event has been taken.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from smtp_tarpit.protocol import Features, Limits, SmtpConnection, replies
from smtp_tarpit.protocol.events import Event, Message, NeedData, StartTls
from smtp_tarpit.protocol.replies import Reply
from tests.hostile.transcript import HOST, SessionModel, message_part
from tests.hostile.wire import check_replies
from tests.protocol.smtp_dialogue import END, buffer_bound, expected_outcome

FEATURES = Features(starttls=True, auth=True, plaintext_auth=True)


class Responder(SessionModel):
    """The session's answers, except that STARTTLS is refused (454): a 220 drops what is buffered, on
    purpose (CVE-2011-0411), and so makes the outcome depend on how the bytes were split."""

    def reply(self, conn: SmtpConnection, event: Event) -> Reply:
        if isinstance(event, StartTls):
            return replies.TLS_UNAVAILABLE
        return super().reply(conn, event)


@dataclass
class Section:
    """One DATA section: the raw octets after the 354 up to its end, and how the core answered them."""

    raw: bytearray = field(default_factory=bytearray)
    parts: bytearray = field(default_factory=bytearray)
    outcome: Event | None = None
    content: bytes | None = None  # the whole message text, parts included, when accepted


@dataclass
class Run:
    events: list[object] = field(default_factory=list)  # logical: parts joined into their message
    output: bytearray = field(default_factory=bytearray)
    sections: list[Section] = field(default_factory=list)


def _answer(
    conn: SmtpConnection, responder: Responder, run: Run, event: Event, section: Section | None
) -> None:
    if section is not None:
        section.outcome = event
        if isinstance(event, Message):
            section.content = bytes(section.parts) + event.content
            run.events.append(Message(section.content))
        else:
            run.events.append(event)
    else:
        assert not isinstance(event, Message), "a message outside any DATA section"
        run.events.append(event)
    reply = responder.reply(conn, event)
    wire = conn.send(reply)
    check_replies(wire)
    run.output += wire


def feed(chunks: Iterable[bytes], limits: Limits, track_sections: bool = False) -> Run:
    conn = SmtpConnection(dataclasses.replace(limits), FEATURES)
    responder = Responder()
    run = Run()
    run.output += conn.send(replies.greeting(HOST))
    section: Section | None = None
    for chunk in chunks:
        if section is not None and track_sections:
            section.raw += chunk
        conn.receive_data(chunk)
        while not isinstance(event := conn.next_event(), NeedData):
            if responder.take(event):
                assert section is not None, "a message part outside any DATA section"
                section.parts += message_part(event) or b""
                continue
            in_data = conn.in_data
            _answer(conn, responder, run, event, section if in_data else None)
            if in_data:
                section = None
            elif conn.in_data:
                section = Section()
                run.sections.append(section)
        assert conn.buffered <= buffer_bound(conn), (conn.state, conn.buffered)
    return run


def check_section(section: Section, limits: Limits) -> None:
    raw = bytes(section.raw)
    if section.outcome is None:  # the stream ended inside this section: nothing may have been decided
        assert raw == b"" or (not raw.startswith(b".\r\n") and END not in raw)
        return
    # Ended at its first end marker and not before: a lone "." line at the start, or CRLF.CRLF.
    assert raw == b".\r\n" or (raw.endswith(END) and raw.find(END) == len(raw) - len(END)), raw[-80:]
    wanted = expected_outcome(raw[:-3], limits)
    if isinstance(section.outcome, Message):
        assert Message(section.content or b"") == wanted
        *lines, tail = (section.content or b"").split(b"\r\n")
        assert tail == b"" and not any(b"\r" in line or b"\n" in line for line in lines)
    else:
        assert section.outcome == wanted


def split(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted({min(max(cut, 0), len(stream)) for cut in cuts}), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(points)]


def check_stream(stream: bytes, cuts: Iterable[int], limits: Limits) -> None:
    """All of the module's promises, for one stream, one way of splitting it and one set of limits."""
    whole = feed([stream], limits)
    chunked = feed(split(stream, cuts), limits)
    bytewise = feed((stream[i : i + 1] for i in range(len(stream))), limits, track_sections=True)
    for run in (chunked, bytewise):
        assert run.events == whole.events
        assert run.output == whole.output
    check_replies(bytes(whole.output))
    for section in bytewise.sections:
        check_section(section, limits)
