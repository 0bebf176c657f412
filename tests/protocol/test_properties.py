"""Properties of the core over arbitrary input: it never raises, memory stays bounded, a message is always the
complete unstuffed text of a DATA section ended by CRLF.CRLF, and how the bytes are split never matters."""

from __future__ import annotations

import itertools
import os
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtp_tarpit.protocol import NEED_DATA, Features, Limits, SmtpConnection, replies
from smtp_tarpit.protocol.events import Answer, Event, Message, MessagePart, StartTls
from tests.protocol.smtp_dialogue import (
    END,
    HOST,
    TRANSACTION,
    Responder,
    buffer_bound,
    canonical_reply,
    expected_outcome,
    with_overrides,
)

EHLO = b"EHLO client.example\r\n"
TEXT = (
    END,
    END,
    b".\r\n",
    b"\r\n",
    b"\r",
    b"\n",
    b".",
    b"..",
    b"text",
    b" ",
    b"\x00",
    b"\xff",
    b"x" * 70,
    b"y" * 700,
)
FRAGMENTS = (
    EHLO,
    b"HELO client.example\r\n",
    TRANSACTION,
    TRANSACTION,
    b"MAIL FROM:<s@example.org> SIZE=100 SMTPUTF8\r\n",
    b"RCPT TO:<alice@example.test>\r\n",
    b"RCPT TO:<nobody@example.test>\r\n",
    "RCPT TO:<\u00e4lice@example.test>\r\n".encode(),
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY x\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"YWxpY2U=\r\n",
    b"*\r\n",
    b"\xc3\xa9",
    b"\xc2\xb2",
    b"AUTH PLAIN ",
    b"MAIL FROM:<s@example.org> SIZE=",
    b"MAIL FROM:<",
    b"@example.test>",
    *TEXT,
)
fragments = st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=8))
# A transaction up to its 354, then message text that may or may not end (and may hide fake ends).
transactions = st.builds(
    lambda parts, end: TRANSACTION + b"".join(parts) + end,
    st.lists(st.one_of(st.sampled_from(TEXT), st.binary(max_size=4)), max_size=20),
    st.sampled_from([END, END, b".\r\n", b""]),
)
streams = st.builds(
    lambda greet, parts: (EHLO if greet else b"") + b"".join(parts),
    st.sampled_from([True, True, True, False]),
    st.lists(st.one_of(transactions, fragments, fragments), max_size=16),
)
limits = st.builds(
    Limits,
    command_line=st.sampled_from([64, 512]),
    text_line=st.sampled_from([80, 1000]),
    message_size=st.sampled_from([200, 2000]),
    recipients=st.sampled_from([1, 3]),
    reject_bare_newline=st.booleans(),
)
ALL_FEATURES = Features(starttls=True, auth=True, plaintext_auth=True)
# Answered 220, STARTTLS drops what is buffered (CVE-2011-0411): only a refused one keeps chunks irrelevant.
NO_TLS_HANDSHAKE = with_overrides({StartTls: replies.TLS_UNAVAILABLE})
PROPERTY = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "200")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(points)]


def new_connection(limits: Limits, features: Features) -> tuple[SmtpConnection, bytearray]:
    conn = SmtpConnection(limits, features)
    return conn, bytearray(conn.send(replies.greeting(HOST)))


def run(
    chunks: list[bytes],
    limits: Limits,
    features: Features,
    responder: Responder,
    undrained: frozenset[int] = frozenset(),
) -> tuple[list[Event], bytes]:
    """Feed the chunks, answering every event; check the buffer bound whenever all events are drained.

    After the chunks whose index is in ``undrained`` the next chunk is fed before any event is read, as a
    session does when several reads complete before it gets round to the connection.
    """
    conn, out = new_connection(limits, features)
    events: list[Event] = []
    for index, chunk in enumerate(chunks):
        conn.receive_data(chunk)
        if index in undrained and index < len(chunks) - 1:
            continue
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
            if not isinstance(event, MessagePart):
                out += conn.send(responder(conn, event))
        assert conn.buffered <= buffer_bound(conn)
    return events, bytes(out)


def run_bytewise(
    stream: bytes, limits: Limits, features: Features, responder: Responder
) -> tuple[list[Event], bytes, list[tuple[bytes, Event]]]:
    """Feed one octet at a time; return also each DATA section's raw bytes with the event that ended it."""
    conn, out = new_connection(limits, features)
    events: list[Event] = []
    sections: list[tuple[bytes, Event]] = []
    start = 0
    for position in range(1, len(stream) + 1):
        conn.receive_data(stream[position - 1 : position])
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
            reading_text = conn.in_data
            out += conn.send(responder(conn, event))
            if reading_text:
                sections.append((stream[start:position], event))
            elif conn.in_data:
                start = position  # after 354, with nothing buffered: the text starts with the next octet
            assert not isinstance(event, Message) or reading_text
    return events, bytes(out), sections


def assert_well_formed(content: bytes) -> None:
    *lines, tail = content.split(b"\r\n")
    assert tail == b""
    assert not any(b"\r" in line or b"\n" in line for line in lines)


@PROPERTY
@given(stream=streams, limits=limits, data=st.data())
def test_arbitrary_chunks_never_raise_and_the_buffer_stays_bounded(
    stream: bytes, limits: Limits, data: st.DataObject
) -> None:
    chunks = split(stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts"))
    undrained = data.draw(st.frozensets(st.integers(0, len(chunks))), label="undrained")
    events, _ = run(chunks, limits, ALL_FEATURES, canonical_reply, undrained)
    for event in events:
        if isinstance(event, Message):
            assert_well_formed(event.content)
            assert len(event.content) <= 2 * limits.message_size


@PROPERTY
@given(stream=streams, limits=limits)
def test_every_message_is_the_unstuffed_text_of_a_data_section_ended_by_crlf_dot_crlf(
    stream: bytes, limits: Limits
) -> None:
    _, _, sections = run_bytewise(stream, limits, ALL_FEATURES, canonical_reply)
    for raw, event in sections:
        # The section ends at the first CRLF.CRLF, or is a lone "." line right after the 354: never earlier,
        # never on a bare CR or LF, and the event comes as soon as the marker is complete.
        assert raw == b".\r\n" or (raw.endswith(END) and raw.find(END) == len(raw) - len(END))
        assert event == expected_outcome(raw[:-3], limits)
        if isinstance(event, Message):
            assert_well_formed(event.content)


@PROPERTY
@given(stream=streams, limits=limits, data=st.data())
def test_chunking_does_not_change_the_events_or_the_output(
    stream: bytes, limits: Limits, data: st.DataObject
) -> None:
    chunks = split(stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts"))
    undrained = data.draw(st.frozensets(st.integers(0, len(chunks))), label="undrained")
    whole = run([stream], limits, ALL_FEATURES, NO_TLS_HANDSHAKE)
    assert run(chunks, limits, ALL_FEATURES, NO_TLS_HANDSHAKE, undrained) == whole
    events, out, _ = run_bytewise(stream, limits, ALL_FEATURES, NO_TLS_HANDSHAKE)
    assert (events, out) == whole


@PROPERTY
@given(body=st.lists(st.sampled_from([b"a", b".", b"..", b"\r", b"\n", b"\r\n", b" "]), max_size=30))
def test_a_dot_stuffed_body_comes_back_unchanged(body: list[bytes]) -> None:
    # What a client does (RFC 5321 4.5.2): stuff a dot before every line that starts with one.
    text = b"".join(body)
    text = re.sub(rb"\r(?!\n)|(?<!\r)\n", b"\r\n", text)  # a well-behaved client sends only CRLF lines
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    stuffed = re.sub(rb"(?m)^\.", b"..", text.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    stream = EHLO + TRANSACTION + stuffed + b".\r\n"
    events, _ = run([stream], Limits(), Features(), canonical_reply)
    assert events[-1] == Message(text)


def joined(events: list[Event]) -> list[Event]:
    """The events with each message's parts joined into its Message (a refused message's parts dropped)."""
    result: list[Event] = []
    parts = bytearray()
    for event in events:
        if isinstance(event, MessagePart):
            parts += event.content
            continue
        whole = Message(bytes(parts) + event.content) if isinstance(event, Message) else event
        if isinstance(event, (Message, Answer)):
            parts.clear()
        result.append(whole)
    return result


@PROPERTY
@given(stream=streams, limits=limits, part=st.integers(1, 300), data=st.data())
def test_a_message_given_out_in_parts_is_the_same_message_and_gets_the_same_answers(
    stream: bytes, limits: Limits, part: int, data: st.DataObject
) -> None:
    chunks = split(stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts"))
    whole = run([stream], limits, ALL_FEATURES, NO_TLS_HANDSHAKE)
    limits.data_part = part
    events, out = run(chunks, limits, ALL_FEATURES, NO_TLS_HANDSHAKE)
    assert (joined(events), out) == whole
    for event in events:
        if isinstance(event, MessagePart):
            assert_well_formed(event.content)
