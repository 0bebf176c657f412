"""Hypothesis properties of the whole command and DATA parser on hostile byte streams (every smuggling fake
end, NUL, bare CR and LF, over-long lines, SASL, parameters, relay tricks, arbitrary binary), split at
arbitrary points: the checks of core_checks.check_stream (no exception, splitting changes nothing, every
reply well formed, one whole outcome per DATA section and never a part), plus the reply catalogue itself.
Derandomised: the same examples on every run."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtp_tarpit.protocol import Features, Limits, replies
from smtp_tarpit.protocol.replies import Reply
from tests.hostile.core_checks import check_stream
from tests.hostile.wire import check_replies

FAKE_ENDS = (
    b"\n.\n",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
)
TEXT = (
    *FAKE_ENDS,
    b"\r\n.\r\n",
    b"\r\n.\r\n",
    b".\r\n",
    b"\r\n",
    b"\r",
    b"\n",
    b".",
    b"..",
    b"\x00",
    b"\xff",
    b"text",
    b"x" * 90,
    b"y" * 1100,
)
COMMANDS = (
    b"EHLO client.example\r\n",
    b"HELO client.example\n",
    b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n",
    b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n",
    b"MAIL FROM:<s@remote.test> SIZE=100 BODY=8BITMIME SMTPUTF8 AUTH=<>\r\n",
    b"MAIL FROM:<;sleep 66;>\r\n",
    b"MAIL FROM:<s@remote.test> AUTH=x\nRCPT TO:<bob@example.test>\r\n",
    b"RCPT TO:<user%other.test@example.test>\r\n",
    b"RCPT TO:<@a.test:user@other.test>\r\n",
    b'RCPT TO:<"user@other.test"@example.test>\r\n',
    b"RCPT TO:<other.test!user@example.test>\r\n",
    b"RCPT TO:<user@[127.0.0.1]>\r\n",
    b"RCPT TO:<${run{\\x2fbin\\x2fsh}}@example.test>\r\n",
    b"RCPT TO:<bob@example.test> NOTIFY=NEVER\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY alice\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U=\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"YWxpY2U=\r\n",
    b"*\r\n",
    b"QUIT\r\n",
    b"GET / HTTP/1.1\r\n",
    b"MA\xc4\xb1L FROM:<s@remote.test>\r\n",
    b"NOOP " + b"z" * 600 + b"\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00",
    b"MAIL FROM:<",
    b"AUTH PLAIN ",
)
pieces = st.one_of(st.sampled_from(COMMANDS), st.sampled_from(TEXT), st.binary(max_size=12))
streams = st.builds(
    lambda greet, parts: (b"EHLO client.example\r\n" if greet else b"") + b"".join(parts),
    st.sampled_from([True, True, True, False]),
    st.lists(pieces, max_size=30),
)
limits = st.builds(
    Limits,
    command_line=st.sampled_from([64, 512]),
    text_line=st.sampled_from([80, 1000]),
    message_size=st.sampled_from([200, 2000]),
    recipients=st.sampled_from([1, 3]),
    reject_bare_newline=st.booleans(),
    junk_commands=st.sampled_from([3, 100]),
)
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(stream=streams, limits=limits, data=st.data())
def test_hostile_streams_split_anywhere_keep_every_promise(
    stream: bytes, limits: Limits, data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40), label="cuts")
    check_stream(stream, cuts, limits)


@PROPERTY
@given(
    before=st.sampled_from([b"", b"Subject: x\r\n\r\n", b".", b"..\r\n"]),
    fake_end=st.sampled_from(FAKE_ENDS),
    after=st.sampled_from([b"", b"MAIL FROM:<a@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"]),
    limits=limits,
    data=st.data(),
)
def test_no_fake_end_ever_ends_the_data(
    before: bytes, fake_end: bytes, after: bytes, limits: Limits, data: st.DataObject
) -> None:
    stream = (
        b"EHLO client.example\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        + before
        + fake_end
        + after
        + b"owned\r\n.\r\nNOOP\r\n"
    )
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    check_stream(stream, cuts, limits)


def _catalogue() -> list[Reply]:
    found = [value for value in vars(replies).values() if isinstance(value, Reply)]
    longest_host = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 octets, the longest DNS name
    everything = ("PIPELINING", "SIZE 2147483648", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8")
    found += [
        replies.greeting(longest_host),
        replies.greeting(longest_host, teaser=True),
        replies.helo(longest_host),
        replies.ehlo(longest_host, (*everything, "STARTTLS", "AUTH PLAIN LOGIN")),
        replies.queued("F" * 64),
        replies.bye(longest_host),
        replies.sasl_challenge("VXNlcm5hbWU6"),
        replies.command_line_too_long(65536),
        replies.text_line_too_long(1_000_000),
        replies.message_too_big(2**31),
        replies.downstream_refused(550, "5.1.1"),
        replies.downstream_refused(554, "5.7.1"),
    ]
    return found


def test_every_reply_in_the_catalogue_is_well_formed() -> None:
    catalogue = _catalogue()
    assert len(catalogue) >= 50
    for reply in catalogue:
        [lines] = check_replies(reply.wire)
        assert len(lines) == len(reply.lines)
        if reply.code not in (220, 250) or reply.enhanced:
            # RFC 2034 3: every reply but the greeting and HELO/EHLO carries an enhanced code, 3xx none.
            assert (reply.enhanced is None) == (300 <= reply.code < 400), reply


def test_limits_and_features_used_here_are_the_cores() -> None:
    # A guard: if Limits or Features change shape, these properties must be looked at again.
    assert {f.name for f in dataclasses.fields(Limits)} >= {
        "command_line",
        "text_line",
        "message_size",
        "recipients",
        "reject_bare_newline",
        "junk_commands",
    }
    assert {f.name for f in dataclasses.fields(Features)} >= {"starttls", "auth", "plaintext_auth"}
