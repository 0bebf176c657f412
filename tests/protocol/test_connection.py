"""Behaviour of the sans-IO SMTP core, bytes in and bytes out: no sockets, no event loop."""

from __future__ import annotations

import base64

import pytest

from smtp_tarpit.protocol import Features, Limits, LocalProtocolError, SmtpConnection, replies
from smtp_tarpit.protocol.connection import SASL_LINE_LIMIT
from smtp_tarpit.protocol.events import Answer, AuthCredentials, Mail, Problem, Rcpt, StartTls
from smtp_tarpit.protocol.replies import Reply
from smtp_tarpit.protocol.state import State
from tests.protocol.smtp_dialogue import HOST, TRANSACTION, Dialogue, in_data, reply_lines, with_overrides

EHLO = b"EHLO client.example\r\n"
ALICE_SECRET = base64.b64encode(b"\x00alice\x00secret")
TLS_AND_AUTH = Features(starttls=True, auth=True)
PLAINTEXT_AUTH = Features(auth=True, plaintext_auth=True)


def greeted(limits: Limits | None = None, features: Features | None = None) -> Dialogue:
    dialogue = Dialogue(limits or Limits(), features or Features())
    assert dialogue.codes(EHLO) == ["250"]
    return dialogue


def after_tls(features: Features = TLS_AND_AUTH) -> Dialogue:
    dialogue = greeted(features=features)
    assert dialogue.codes(b"STARTTLS\r\n") == ["220 2.0.0"]
    assert dialogue.conn.tls_active
    dialogue.codes(EHLO)
    return dialogue


# --- greeting, sequence and pipelining ------------------------------------------------------------------


def test_greeting_is_220_with_our_hostname() -> None:
    assert Dialogue().greeting == b"220 mx.example.test ESMTP smtp-tarpit\r\n"


def test_pipelined_commands_are_answered_in_order_against_the_state_left_by_earlier_replies() -> None:
    dialogue = greeted()
    out = dialogue.codes(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\nNOOP\r\n")
    assert out == ["250 2.1.0", "550 5.1.1", "554 5.5.1", "250 2.0.0"]
    assert dialogue.say(b"") == []
    assert not dialogue.conn.in_data


def test_pipelined_refused_data_lets_the_message_text_be_read_as_commands() -> None:
    dialogue = greeted()
    out = dialogue.codes(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nhello\r\n.\r\n")
    assert out == ["250 2.1.0", "550 5.1.1", "554 5.5.1", "500 5.5.1", "500 5.5.1"]
    assert dialogue.messages == []


def test_one_accepted_recipient_among_refused_ones_lets_data_start() -> None:
    dialogue = greeted()
    out = dialogue.codes(
        b"MAIL FROM:<s@example.org>\r\nRCPT TO:<x@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
        b"RCPT TO:<y@example.test>\r\nDATA\r\nhi\r\n.\r\n"
    )
    assert out == ["250 2.1.0", "550 5.1.1", "250 2.1.5", "550 5.1.1", "354", "250 2.0.0"]
    assert dialogue.messages == [b"hi\r\n"]


def test_next_event_before_the_previous_one_is_answered_is_our_bug() -> None:
    conn = SmtpConnection(Limits(), Features())
    conn.receive_data(b"NOOP\r\nNOOP\r\n")
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_only_the_greeting_or_421_may_be_sent_unprompted() -> None:
    conn = SmtpConnection(Limits(), Features())
    with pytest.raises(LocalProtocolError):
        conn.send(replies.OK)


def test_mail_before_ehlo_is_refused_503() -> None:
    dialogue = Dialogue()
    assert dialogue.say(b"MAIL FROM:<s@example.org>\r\n") == ["503 5.5.1 Send HELO or EHLO first"]
    assert dialogue.conn.state is State.INIT


def test_nested_mail_is_refused_503() -> None:
    dialogue = greeted()
    dialogue.say(b"MAIL FROM:<s@example.org>\r\n")
    assert dialogue.say(b"MAIL FROM:<t@example.org>\r\n") == ["503 5.5.1 Sender already specified"]
    dialogue.say(b"RCPT TO:<alice@example.test>\r\n")
    assert dialogue.codes(b"MAIL FROM:<t@example.org>\r\n") == ["503 5.5.1"]


@pytest.mark.parametrize("command", [b"RCPT TO:<alice@example.test>\r\n", b"DATA\r\n"])
def test_rcpt_and_data_before_mail_are_refused_503(command: bytes) -> None:
    assert greeted().say(command) == ["503 5.5.1 Need MAIL command first"]


def test_mail_refused_by_the_session_starts_no_transaction() -> None:
    dialogue = Dialogue(responder=with_overrides({Mail: replies.RELAY_DENIED}))
    dialogue.feed(EHLO)
    out = dialogue.codes(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.test>\r\n")
    assert out == ["554 5.7.1", "503 5.5.1"]


def test_rset_ends_the_transaction() -> None:
    dialogue = greeted()
    out = dialogue.codes(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.test>\r\nRSET\r\nDATA\r\n")
    assert out == ["250 2.1.0", "250 2.1.5", "250 2.0.0", "503 5.5.1"]
    assert dialogue.conn.recipients == 0


def test_rset_before_ehlo_keeps_ehlo_required() -> None:
    dialogue = Dialogue()
    assert dialogue.codes(b"RSET\r\nMAIL FROM:<s@example.org>\r\n") == ["250 2.0.0", "503 5.5.1"]


def test_ehlo_in_a_transaction_resets_it() -> None:
    dialogue = greeted()
    dialogue.feed(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.test>\r\n")
    assert dialogue.codes(EHLO + b"RCPT TO:<bob@example.test>\r\n") == ["250", "503 5.5.1"]


def test_helo_gets_a_one_line_reply_and_no_esmtp_parameters() -> None:
    dialogue = Dialogue()
    assert dialogue.say(b"HELO client.example\r\n") == ["250 mx.example.test"]
    assert dialogue.codes(b"MAIL FROM:<s@example.org> SIZE=10\r\n") == ["555 5.5.4"]
    assert dialogue.codes(b"MAIL FROM:<s@example.org>\r\n") == ["250 2.1.0"]


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"EHLO\r\n", "501 5.5.4 Syntax: EHLO hostname"),
        (b"HELO\r\n", "501 5.5.4 Syntax: HELO hostname"),
        (b"EHLO two words\r\n", "501 5.5.4 Syntax: EHLO hostname"),
    ],
)
def test_helo_and_ehlo_need_exactly_one_name(command: bytes, reply: str) -> None:
    dialogue = Dialogue()
    assert dialogue.say(command) == [reply]
    assert dialogue.conn.state is State.INIT


def test_commands_are_case_insensitive() -> None:
    dialogue = Dialogue()
    out = dialogue.codes(b"ehlo c.example\r\nmail from:<s@example.org>\r\nrcpt to:<bob@example.test>\r\n")
    assert out == ["250", "250 2.1.0", "250 2.1.5"]


@pytest.mark.parametrize(
    ("prelude", "command"),
    [(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<bob@example.test>\r\n", b"DATA now"), (b"", b"RSET all")],
)
def test_data_and_rset_refuse_arguments_501(prelude: bytes, command: bytes) -> None:
    dialogue = greeted()
    dialogue.feed(prelude)
    assert dialogue.say(command + b"\r\n") == ["501 5.5.4 No arguments allowed"]


# --- command lines ----------------------------------------------------------------------------------------


def test_command_line_of_513_octets_is_refused_500_and_the_next_command_still_works() -> None:
    dialogue = greeted()
    line = b"NOOP " + b"x" * (513 - 7) + b"\r\n"
    assert len(line) == 513
    out = dialogue.say(line + b"NOOP\r\n")
    assert out == ["500 5.5.2 Line too long (limit 512 octets)", "250 2.0.0 Ok"]


def test_command_line_of_512_octets_is_accepted() -> None:
    line = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    assert len(line) == 512
    assert greeted().codes(line) == ["250 2.0.0"]


def test_too_long_line_split_over_chunks_is_refused_once() -> None:
    dialogue = greeted()
    assert dialogue.say(b"MAIL FROM:<" + b"a" * 600) == []
    assert dialogue.say(b"b" * 600) == []
    assert dialogue.codes(b"@example.org>\r\nNOOP\r\n") == ["500 5.5.2", "250 2.0.0"]
    assert dialogue.conn.state is State.READY


def test_memory_stays_bounded_when_a_client_sends_1mb_without_newline() -> None:
    dialogue = greeted()
    for _ in range(256):
        assert dialogue.say(b"A" * 4096) == []
        assert dialogue.conn.buffered <= 512
    assert dialogue.say(b"\r\nNOOP\r\n") == ["500 5.5.2 Line too long (limit 512 octets)", "250 2.0.0 Ok"]


def test_memory_stays_bounded_when_1mb_without_newline_arrives_in_one_chunk() -> None:
    dialogue = greeted()
    assert dialogue.say(b"A" * 1024 * 1024) == []
    assert dialogue.conn.buffered <= 512


def test_nul_in_command_gives_501() -> None:
    dialogue = greeted()
    assert dialogue.say(b"NOOP\x00\r\n") == ["501 5.5.2 NUL character not allowed in commands"]
    assert dialogue.say(b"MAIL FROM:<s\x00@example.org>\r\n") == [
        "501 5.5.2 NUL character not allowed in commands"
    ]


def test_invalid_utf8_in_command_gives_501() -> None:
    assert greeted().say(b"NOOP \xff\r\n") == ["501 5.5.2 Invalid characters in command"]


def test_a_bare_lf_ends_a_command_line() -> None:
    assert greeted().codes(b"NOOP\nNOOP\r\n") == ["250 2.0.0", "250 2.0.0"]


def test_a_bare_cr_does_not_end_a_command_line() -> None:
    assert greeted().codes(b"NOOP\rQUIT\r\n") == ["500 5.5.1"]


def test_unknown_command_gives_500() -> None:
    assert greeted().say(b"BDAT 10 LAST\r\n") == ["500 5.5.1 Command unrecognized"]


@pytest.mark.parametrize("command", [b"EXPN staff", b"TURN", b"ETRN example.test"])
def test_expn_turn_and_etrn_are_not_implemented_502(command: bytes) -> None:
    assert greeted().say(command + b"\r\n") == ["502 5.5.1 Command not implemented"]


@pytest.mark.parametrize("verb", ["MA\u0131L", "\ufb06ARTTLS", "\u017fTARTTLS", "QU\u0131T"])
def test_unicode_lookalikes_of_verbs_are_unknown_commands(verb: str) -> None:
    # str.upper() maps dotless i to I, long s to S and the "st" ligature to ST.
    dialogue = greeted(features=Features(starttls=True))
    assert dialogue.codes(verb.encode() + b" FROM:<s@example.org>\r\n") == ["500 5.5.1"]


def test_vrfy_gives_252() -> None:
    assert greeted().say(b"VRFY alice\r\n") == [
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
    ]


def test_vrfy_without_argument_gives_501() -> None:
    assert greeted().codes(b"VRFY\r\n") == ["501 5.5.4"]


def test_help_and_noop_work_before_ehlo() -> None:
    dialogue = Dialogue()
    assert dialogue.say(b"HELP\r\nNOOP\r\n") == [
        "214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
        "214 2.0.0 See RFC 5321 for details",
        "250 2.0.0 Ok",
    ]


# --- closing ----------------------------------------------------------------------------------------------


def test_quit_gets_221_and_closes_and_nothing_after_it_is_read() -> None:
    dialogue = greeted()
    assert dialogue.say(b"QUIT\r\nNOOP\r\n") == ["221 2.0.0 mx.example.test closing connection"]
    assert dialogue.conn.closed
    assert dialogue.say(b"NOOP\r\n") == []
    assert dialogue.conn.buffered == 0


def test_a_421_answer_closes_the_connection() -> None:
    dialogue = Dialogue(responder=with_overrides({Rcpt: replies.TOO_MANY_CONNECTIONS}))
    dialogue.feed(EHLO)
    out = dialogue.codes(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.test>\r\nNOOP\r\n")
    assert out == ["250 2.1.0", "421 4.7.0"]
    assert dialogue.conn.closed


def test_an_unsolicited_421_closes_the_connection_and_drops_buffered_bytes() -> None:
    dialogue = greeted()
    dialogue.conn.receive_data(b"NOOP\r\n")
    assert dialogue.conn.send(replies.IDLE_TIMEOUT) == b"421 4.4.2 Idle timeout, closing connection\r\n"
    assert dialogue.conn.closed
    assert dialogue.conn.buffered == 0
    assert dialogue.say(b"NOOP\r\n") == []


def test_an_unsolicited_421_during_data_closes_the_connection() -> None:
    dialogue = in_data()
    dialogue.feed(b"half a message\r\n")
    dialogue.conn.send(replies.SHUTTING_DOWN)
    assert dialogue.conn.closed
    assert dialogue.say(b".\r\n") == []


# --- DATA -------------------------------------------------------------------------------------------------


def test_message_text_is_delivered_as_sent() -> None:
    dialogue = in_data()
    assert dialogue.say(b"Subject: hi\r\n\r\nbody\r\n.\r\n") == ["250 2.0.0 Ok: queued as TESTID"]
    assert dialogue.messages == [b"Subject: hi\r\n\r\nbody\r\n"]
    assert dialogue.conn.state is State.READY
    assert dialogue.conn.recipients == 0


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n"])
def test_data_ends_only_on_crlf_dot_crlf(fake_end: bytes) -> None:
    dialogue = in_data()
    smuggled = b"a" + fake_end + b"MAIL FROM:<evil@example.org>\r\n"
    assert dialogue.say(smuggled) == []
    assert dialogue.conn.in_data
    assert dialogue.codes(b".\r\n") == ["250 2.0.0"]
    [content] = dialogue.messages
    assert b"MAIL FROM:<evil@example.org>\r\n" in content
    assert [type(event) for event in dialogue.events].count(Mail) == 1


def test_bare_cr_and_lf_in_the_text_are_normalised_to_crlf_by_default() -> None:
    dialogue = in_data()
    assert dialogue.codes(b"one\ntwo\rthree\r\n.\r\n") == ["250 2.0.0"]
    assert dialogue.messages == [b"one\r\ntwo\r\nthree\r\n"]


def test_bare_newline_in_the_text_is_refused_554_when_configured() -> None:
    dialogue = in_data(Limits(reject_bare_newline=True))
    out = dialogue.say(b"one\ntwo\r\n.\r\n")
    assert out == ["554 5.5.2 Message refused: bare <CR> or <LF> in message text"]
    assert dialogue.messages == []
    assert dialogue.conn.state is State.READY
    assert dialogue.codes(TRANSACTION) == ["250 2.1.0", "250 2.1.5", "354"]


def test_clean_text_passes_when_bare_newlines_are_refused() -> None:
    dialogue = in_data(Limits(reject_bare_newline=True))
    assert dialogue.codes(b"clean\r\n.\r\n") == ["250 2.0.0"]


def test_leading_dots_are_unstuffed() -> None:
    dialogue = in_data()
    dialogue.feed(b"..\r\n...two\r\n.x\r\nmid.dle\r\n\r\n..\r\n.\r\n")
    assert dialogue.messages == [b".\r\n..two\r\nx\r\nmid.dle\r\n\r\n.\r\n"]


def test_dot_stuffed_first_line_is_unstuffed() -> None:
    dialogue = in_data()
    dialogue.feed(b"..hidden\r\n.\r\n")
    assert dialogue.messages == [b".hidden\r\n"]


def test_empty_message_is_delivered_empty() -> None:
    dialogue = in_data()
    assert dialogue.codes(b".\r\n") == ["250 2.0.0"]
    assert dialogue.messages == [b""]


@pytest.mark.parametrize("cut", [1, 2])
def test_empty_message_end_split_over_chunks_is_found(cut: int) -> None:
    dialogue = in_data()
    assert dialogue.say(b".\r\n"[:cut]) == []
    assert dialogue.codes(b".\r\n"[cut:] + b"NOOP\r\n") == ["250 2.0.0", "250 2.0.0"]
    assert dialogue.messages == [b""]


@pytest.mark.parametrize("cut", range(1, 5))
def test_end_of_data_split_over_chunks_is_found(cut: int) -> None:
    dialogue = in_data()
    assert dialogue.say(b"text" + b"\r\n.\r\n"[:cut]) == []
    assert dialogue.codes(b"\r\n.\r\n"[cut:]) == ["250 2.0.0"]
    assert dialogue.messages == [b"text\r\n"]


def test_message_of_one_empty_line() -> None:
    dialogue = in_data()
    dialogue.feed(b"\r\n.\r\n")
    assert dialogue.messages == [b"\r\n"]


def test_eight_bit_text_passes_unchanged() -> None:
    dialogue = in_data()
    dialogue.feed(b"caf\xc3\xa9 \xff\x00\r\n.\r\n")
    assert dialogue.messages == [b"caf\xc3\xa9 \xff\x00\r\n"]


def test_commands_pipelined_after_the_end_of_data_run_after_the_message() -> None:
    dialogue = in_data()
    out = dialogue.codes(b"text\r\n.\r\nMAIL FROM:<s@example.org>\r\nQUIT\r\n")
    assert out == ["250 2.0.0", "250 2.1.0", "221 2.0.0"]


def test_message_of_exactly_the_size_limit_is_accepted() -> None:
    dialogue = in_data(Limits(message_size=10))
    assert dialogue.codes(b"12345678\r\n.\r\n") == ["250 2.0.0"]


def test_oversize_message_gives_552_and_the_session_stays_usable() -> None:
    dialogue = in_data(Limits(message_size=10))
    out = dialogue.say(b"123456789\r\n.\r\n")
    assert out == ["552 5.3.4 Message size exceeds fixed limit of 10 octets"]
    assert dialogue.messages == []
    assert dialogue.conn.state is State.READY
    assert dialogue.codes(TRANSACTION + b"ok\r\n.\r\n") == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]
    assert dialogue.messages == [b"ok\r\n"]


def test_streaming_50mb_keeps_the_buffer_bounded_and_answers_552() -> None:
    limit = 10 * 1024 * 1024
    dialogue = in_data(Limits(message_size=limit))
    chunk = (b"y" * 78 + b"\r\n") * 800  # 64,000 octets
    for _ in range(50 * 1024 * 1024 // len(chunk) + 1):
        assert dialogue.say(chunk) == []
        assert dialogue.conn.buffered <= limit + 5
    assert dialogue.codes(b".\r\nNOOP\r\n") == ["552 5.3.4", "250 2.0.0"]
    assert dialogue.conn.buffered == 0


def test_past_the_limit_the_end_is_not_lost_when_chunks_arrive_before_next_event() -> None:
    dialogue = in_data(Limits(message_size=10))
    dialogue.say(b"x" * 100)
    dialogue.conn.receive_data(b"\r\n.\r\nNOOP\r\n")
    dialogue.conn.receive_data(b"RSET\r\n")
    assert dialogue.codes(b"") == ["552 5.3.4", "250 2.0.0", "250 2.0.0"]


def test_text_line_longer_than_1000_octets_gives_554() -> None:
    dialogue = in_data()
    out = dialogue.say(b"x" * 999 + b"\r\n.\r\n")
    assert out == ["554 5.6.0 Message refused: a line is longer than 1000 octets"]
    assert dialogue.conn.state is State.READY


def test_text_line_of_1000_octets_is_accepted() -> None:
    dialogue = in_data()
    assert dialogue.codes(b"x" * 998 + b"\r\n.\r\n") == ["250 2.0.0"]


def test_refused_message_answer_is_an_answer_event_with_a_problem() -> None:
    dialogue = in_data(Limits(message_size=10))
    dialogue.feed(b"x" * 50 + b"\r\n.\r\n")
    assert dialogue.events[-1] == Answer(replies.message_too_big(10), Problem.MESSAGE_TOO_BIG)


# --- recipients and SIZE ----------------------------------------------------------------------------------


def test_100_recipients_then_452() -> None:
    dialogue = greeted()
    dialogue.feed(b"MAIL FROM:<s@example.org>\r\n")
    assert dialogue.codes(b"RCPT TO:<alice@example.test>\r\n" * 100) == ["250 2.1.5"] * 100
    assert dialogue.say(b"RCPT TO:<bob@example.test>\r\n") == ["452 4.5.3 Too many recipients"]
    assert dialogue.codes(b"DATA\r\n") == ["354"]


def test_refused_recipients_do_not_count_against_the_limit() -> None:
    dialogue = greeted(Limits(recipients=2))
    dialogue.feed(b"MAIL FROM:<s@example.org>\r\n")
    out = dialogue.codes(b"RCPT TO:<x@example.test>\r\n" * 3 + b"RCPT TO:<alice@example.test>\r\n" * 3)
    assert out == ["550 5.1.1"] * 3 + ["250 2.1.5", "250 2.1.5", "452 4.5.3"]


def test_the_recipient_count_starts_again_with_each_transaction() -> None:
    dialogue = greeted(Limits(recipients=1))
    dialogue.feed(TRANSACTION + b"x\r\n.\r\n")
    assert dialogue.codes(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<bob@example.test>\r\n") == [
        "250 2.1.0",
        "250 2.1.5",
    ]


def test_size_over_the_limit_gives_552_at_mail() -> None:
    dialogue = greeted(Limits(message_size=1000))
    assert dialogue.say(b"MAIL FROM:<s@example.org> SIZE=1001\r\n") == [
        "552 5.3.4 Declared message size exceeds fixed limit"
    ]
    assert dialogue.conn.state is State.READY
    assert dialogue.codes(b"MAIL FROM:<s@example.org> SIZE=1000\r\n") == ["250 2.1.0"]


def test_mail_event_carries_size_body_and_smtputf8() -> None:
    dialogue = greeted()
    dialogue.feed(b"MAIL FROM:<s@example.org> size=42 BODY=8BITMIME SMTPUTF8\r\n")
    event = dialogue.events[-1]
    assert isinstance(event, Mail)
    assert (event.size, event.smtputf8) == (42, True)


@pytest.mark.parametrize(
    "params",
    [
        "SIZE=abc",
        "SIZE=\u00b2",
        "SIZE=\u0661\u0662",
        "SIZE",
        "BODY=BINARYMIME",
        "SMTPUTF8=yes",
        "NOTIFY=NEVER",
    ],
)
def test_unsupported_or_malformed_mail_parameters_give_555(params: str) -> None:
    assert greeted().codes(f"MAIL FROM:<s@example.org> {params}\r\n".encode()) == ["555 5.5.4"]


def test_rcpt_parameters_give_555() -> None:
    dialogue = greeted()
    dialogue.feed(b"MAIL FROM:<s@example.org>\r\n")
    assert dialogue.codes(b"RCPT TO:<alice@example.test> NOTIFY=NEVER\r\n") == ["555 5.5.4"]


def test_null_sender_is_accepted() -> None:
    dialogue = greeted()
    assert dialogue.codes(b"MAIL FROM:<>\r\n") == ["250 2.1.0"]
    assert dialogue.events[-1] == Mail(None, None, False)


def test_null_recipient_is_refused_501() -> None:
    dialogue = greeted()
    dialogue.feed(b"MAIL FROM:<>\r\n")
    assert dialogue.say(b"RCPT TO:<>\r\n") == ["501 5.1.3 Null recipient not allowed"]


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"MAIL <s@example.org>", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM:<s@@example.org>", "501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<s@example.org", "501 5.1.7 Bad sender address syntax"),
    ],
)
def test_malformed_mail_is_refused_501(command: bytes, reply: str) -> None:
    assert greeted().say(command + b"\r\n") == [reply]


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"RCPT <alice@example.test>", "501 5.5.4 Syntax: RCPT TO:<address>"),
        (b"RCPT TO:<alice@>", "501 5.1.3 Bad recipient address syntax"),
        (b"RCPT TO:alice", "501 5.1.3 Bad recipient address syntax"),
    ],
)
def test_malformed_rcpt_is_refused_501(command: bytes, reply: str) -> None:
    dialogue = greeted()
    dialogue.feed(b"MAIL FROM:<>\r\n")
    assert dialogue.say(command + b"\r\n") == [reply]


# --- SMTPUTF8 ---------------------------------------------------------------------------------------------


def test_non_ascii_sender_without_smtputf8_gives_553() -> None:
    assert greeted().say("MAIL FROM:<jos\u00e9@example.org>\r\n".encode()) == [
        "553 5.6.7 Non-ASCII address requires SMTPUTF8"
    ]


def test_non_ascii_addresses_with_smtputf8_are_accepted() -> None:
    dialogue = greeted()
    out = dialogue.codes("MAIL FROM:<jos\u00e9@b\u00fccher.example> SMTPUTF8\r\n".encode())
    assert out == ["250 2.1.0"]
    dialogue.feed("RCPT TO:<\u00e4lice@example.test>\r\n".encode())
    event = dialogue.events[-1]
    assert isinstance(event, Rcpt)
    assert event.recipient.local == "\u00e4lice"


def test_non_ascii_recipient_needs_smtputf8_on_mail() -> None:
    dialogue = greeted()
    dialogue.feed(b"MAIL FROM:<s@example.org>\r\n")
    assert dialogue.codes("RCPT TO:<\u00e4lice@example.test>\r\n".encode()) == ["553 5.6.7"]


def test_smtputf8_does_not_outlive_its_transaction() -> None:
    dialogue = greeted()
    dialogue.feed(b"MAIL FROM:<s@example.org> SMTPUTF8\r\nRSET\r\nMAIL FROM:<s@example.org>\r\n")
    assert dialogue.codes("RCPT TO:<\u00e4lice@example.test>\r\n".encode()) == ["553 5.6.7"]


# --- EHLO extensions --------------------------------------------------------------------------------------


def test_ehlo_advertises_the_esmtp_extensions() -> None:
    dialogue = Dialogue()
    assert dialogue.say(EHLO) == [
        "250-mx.example.test",
        "250-PIPELINING",
        "250-SIZE 10485760",
        "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES",
        "250 SMTPUTF8",
    ]


@pytest.mark.parametrize(
    ("features", "extra"),
    [
        (Features(), []),
        (Features(starttls=True), ["STARTTLS"]),
        (Features(auth=True), []),
        (Features(starttls=True, auth=True), ["STARTTLS"]),
        (Features(auth=True, plaintext_auth=True), ["AUTH PLAIN LOGIN"]),
        (Features(plaintext_auth=True), []),
        (Features(starttls=True, auth=True, plaintext_auth=True), ["STARTTLS", "AUTH PLAIN LOGIN"]),
    ],
)
def test_ehlo_advertises_starttls_and_auth_only_when_allowed(features: Features, extra: list[str]) -> None:
    lines = Dialogue(features=features).say(EHLO)
    assert [line[4:] for line in lines[6:]] == extra


def test_ehlo_size_follows_the_configured_limit() -> None:
    assert "250-SIZE 2048" in Dialogue(Limits(message_size=2048)).say(EHLO)


# --- STARTTLS ---------------------------------------------------------------------------------------------


def test_starttls_220_discards_pipelined_plaintext_commands() -> None:
    # CVE-2011-0411: commands injected before the handshake must never run after it.
    dialogue = greeted(features=Features(starttls=True))
    out = dialogue.say(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\nRSET\r\n")
    assert out == ["220 2.0.0 Ready to start TLS"]
    assert dialogue.conn.buffered == 0
    assert not any(isinstance(event, Mail) for event in dialogue.events)


def test_starttls_resets_the_session_and_ehlo_is_needed_again() -> None:
    dialogue = greeted(features=Features(starttls=True))
    dialogue.feed(b"STARTTLS\r\n")
    assert dialogue.conn.state is State.INIT
    assert (dialogue.conn.helo_name, dialogue.conn.extended) == ("", False)
    assert dialogue.codes(b"MAIL FROM:<s@example.org>\r\n") == ["503 5.5.1"]
    assert "250-STARTTLS" not in dialogue.say(EHLO)
    assert dialogue.codes(b"MAIL FROM:<s@example.org>\r\n") == ["250 2.1.0"]


def test_starttls_not_offered_gives_502() -> None:
    assert greeted().say(b"STARTTLS\r\n") == ["502 5.5.1 Command not implemented"]


def test_starttls_before_ehlo_gives_503() -> None:
    assert Dialogue(features=Features(starttls=True)).codes(b"STARTTLS\r\n") == ["503 5.5.1"]


def test_starttls_in_a_transaction_gives_503() -> None:
    dialogue = greeted(features=Features(starttls=True))
    dialogue.feed(b"MAIL FROM:<s@example.org>\r\n")
    assert dialogue.say(b"STARTTLS\r\n") == ["503 5.5.1 Not allowed during a mail transaction"]


def test_starttls_twice_gives_503() -> None:
    assert after_tls().say(b"STARTTLS\r\n") == ["503 5.5.1 TLS already active"]


def test_starttls_refused_454_keeps_the_session_and_its_buffer() -> None:
    responder = with_overrides({StartTls: replies.TLS_UNAVAILABLE})
    dialogue = Dialogue(features=Features(starttls=True), responder=responder)
    dialogue.feed(EHLO)
    assert dialogue.codes(b"STARTTLS\r\nMAIL FROM:<s@example.org>\r\n") == ["454 4.7.0", "250 2.1.0"]
    assert not dialogue.conn.tls_active


def test_starttls_forgets_authentication_made_in_plaintext() -> None:
    dialogue = greeted(features=Features(starttls=True, auth=True, plaintext_auth=True))
    assert dialogue.codes(b"AUTH PLAIN " + ALICE_SECRET + b"\r\n") == ["235 2.7.0"]
    dialogue.feed(b"STARTTLS\r\n")
    assert not dialogue.conn.authenticated
    assert "250 AUTH PLAIN LOGIN" in dialogue.say(EHLO)


# --- AUTH -------------------------------------------------------------------------------------------------


def test_auth_before_tls_gives_538() -> None:
    dialogue = greeted(features=TLS_AND_AUTH)
    assert dialogue.say(b"AUTH PLAIN " + ALICE_SECRET + b"\r\n") == [
        "538 5.7.11 Encryption required for requested authentication mechanism"
    ]
    assert not dialogue.conn.authenticated


def test_auth_is_accepted_in_plaintext_with_plaintext_auth() -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    assert dialogue.say(b"AUTH PLAIN " + ALICE_SECRET + b"\r\n") == ["235 2.7.0 Authentication successful"]
    assert dialogue.conn.authenticated


def test_auth_plain_with_initial_response_after_tls() -> None:
    dialogue = after_tls()
    assert dialogue.codes(b"AUTH PLAIN " + ALICE_SECRET + b"\r\n") == ["235 2.7.0"]
    assert dialogue.events[-1] == AuthCredentials("PLAIN", "alice", "secret", "")
    assert "250 SMTPUTF8" in dialogue.say(EHLO)  # AUTH no longer advertised


def test_auth_plain_with_authzid() -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    dialogue.feed(b"AUTH PLAIN " + base64.b64encode(b"boss\x00alice\x00secret") + b"\r\n")
    assert dialogue.events[-1] == AuthCredentials("PLAIN", "alice", "secret", "boss")


def test_auth_plain_with_334_continuation() -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    assert dialogue.feed(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert dialogue.conn.state is State.SASL
    assert dialogue.codes(ALICE_SECRET + b"\r\n") == ["235 2.7.0"]
    assert dialogue.conn.state is State.READY


def test_auth_login_in_two_steps() -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    assert dialogue.say(b"AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"]
    assert dialogue.say(base64.b64encode(b"alice") + b"\r\n") == ["334 UGFzc3dvcmQ6"]
    assert dialogue.codes(base64.b64encode(b"secret") + b"\r\n") == ["235 2.7.0"]
    assert dialogue.events[-1] == AuthCredentials("LOGIN", "alice", "secret", "")


def test_auth_login_with_initial_response() -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    assert dialogue.say(b"AUTH LOGIN " + base64.b64encode(b"alice") + b"\r\n") == ["334 UGFzc3dvcmQ6"]
    assert dialogue.codes(base64.b64encode(b"secret") + b"\r\n") == ["235 2.7.0"]


def test_pipelined_sasl_responses_are_read_as_responses() -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    login = b"AUTH LOGIN\r\n" + base64.b64encode(b"alice") + b"\r\n" + base64.b64encode(b"secret") + b"\r\n"
    assert dialogue.say(login) == [
        "334 VXNlcm5hbWU6",
        "334 UGFzc3dvcmQ6",
        "235 2.7.0 Authentication successful",
    ]


@pytest.mark.parametrize(
    "steps", [[b"AUTH PLAIN"], [b"AUTH LOGIN"], [b"AUTH LOGIN", base64.b64encode(b"alice")]]
)
def test_asterisk_cancels_auth(steps: list[bytes]) -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    for step in steps:
        dialogue.feed(step + b"\r\n")
    assert dialogue.say(b"*\r\n") == ["501 5.7.0 Authentication cancelled"]
    assert dialogue.conn.state is State.READY
    assert dialogue.codes(b"NOOP\r\n") == ["250 2.0.0"]


@pytest.mark.parametrize("response", [b"not base64!", b"YWxpY2U", "\u00e9t\u00e9".encode(), b"/w=="])
def test_bad_base64_or_bad_utf8_gives_501(response: bytes) -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    dialogue.feed(b"AUTH PLAIN\r\n")
    assert dialogue.say(response + b"\r\n") == ["501 5.5.2 Cannot decode authentication response"]
    assert dialogue.conn.state is State.READY


def test_bad_initial_response_gives_501() -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    assert dialogue.codes("AUTH PLAIN \u00e9\r\n".encode()) == ["501 5.5.2"]
    assert dialogue.codes(b"AUTH PLAIN " + base64.b64encode(b"no-nuls") + b"\r\n") == ["501 5.5.2"]


def test_wrong_password_gives_535_and_a_retry_is_allowed() -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    wrong = base64.b64encode(b"\x00alice\x00guess")
    assert dialogue.say(b"AUTH PLAIN " + wrong + b"\r\n") == ["535 5.7.8 Authentication credentials invalid"]
    assert not dialogue.conn.authenticated
    assert dialogue.codes(b"AUTH PLAIN " + ALICE_SECRET + b"\r\n") == ["235 2.7.0"]


def test_auth_when_already_authenticated_gives_503() -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    dialogue.feed(b"AUTH PLAIN " + ALICE_SECRET + b"\r\n")
    assert dialogue.say(b"AUTH PLAIN " + ALICE_SECRET + b"\r\n") == ["503 5.5.1 Already authenticated"]


def test_unknown_auth_mechanism_gives_504() -> None:
    assert greeted(features=PLAINTEXT_AUTH).say(b"AUTH CRAM-MD5\r\n") == [
        "504 5.5.4 Unrecognized authentication type"
    ]


def test_auth_without_a_users_file_gives_502() -> None:
    assert greeted(features=Features(plaintext_auth=True)).codes(b"AUTH PLAIN\r\n") == ["502 5.5.1"]


def test_auth_in_a_transaction_gives_503() -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    dialogue.feed(b"MAIL FROM:<s@example.org>\r\n")
    assert dialogue.codes(b"AUTH PLAIN " + ALICE_SECRET + b"\r\n") == ["503 5.5.1"]


def test_auth_before_ehlo_gives_503() -> None:
    assert Dialogue(features=PLAINTEXT_AUTH).codes(b"AUTH PLAIN\r\n") == ["503 5.5.1"]


def test_sasl_response_longer_than_a_command_line_is_accepted() -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    dialogue.feed(b"AUTH PLAIN\r\n")
    long_password = b"p" * 3000
    response = base64.b64encode(b"\x00alice\x00" + long_password)
    assert len(response) + 2 > 512
    assert dialogue.codes(response + b"\r\n") == ["535 5.7.8"]
    event = dialogue.events[-1]
    assert isinstance(event, AuthCredentials)
    assert event.password == long_password.decode()


def test_sasl_response_longer_than_its_limit_gives_500() -> None:
    dialogue = greeted(features=PLAINTEXT_AUTH)
    dialogue.feed(b"AUTH PLAIN\r\n")
    assert dialogue.codes(b"A" * SASL_LINE_LIMIT + b"\r\nNOOP\r\n") == ["500 5.5.2", "250 2.0.0"]
    assert dialogue.conn.state is State.READY


# --- the reply catalogue ----------------------------------------------------------------------------------


def _catalogue() -> list[tuple[str, Reply]]:
    found: list[tuple[str, Reply]] = []
    for name in dir(replies):
        value = getattr(replies, name)
        if isinstance(value, Reply):
            found.append((name, value))
    found += [
        ("queued", replies.queued("ID")),
        ("bye", replies.bye(HOST)),
        ("sasl_challenge", replies.sasl_challenge("")),
        ("command_line_too_long", replies.command_line_too_long(512)),
        ("text_line_too_long", replies.text_line_too_long(1000)),
        ("message_too_big", replies.message_too_big(10)),
    ]
    return found


def test_the_catalogue_is_found() -> None:
    names = {name for name, _ in _catalogue()}
    assert {"OK", "UNKNOWN_USER", "AUTH_FAILED", "TOO_MANY_RECIPIENTS", "queued"} <= names
    assert len(names) > 50


@pytest.mark.parametrize(("name", "reply"), _catalogue(), ids=[name for name, _ in _catalogue()])
def test_every_2xx_4xx_5xx_reply_carries_an_enhanced_code(name: str, reply: Reply) -> None:
    if reply.code // 100 == 3:
        assert reply.enhanced is None, name
        return
    assert reply.enhanced is not None, name
    klass, subject, detail = reply.enhanced.split(".")
    assert klass == str(reply.code // 100), name
    assert subject.isdigit() and detail.isdigit(), name
    assert all(line[4:].split(" ")[0] == reply.enhanced for line in reply_lines(reply.wire)), name


def test_only_greeting_helo_and_ehlo_replies_have_no_enhanced_code() -> None:
    assert replies.greeting(HOST).enhanced is None
    assert replies.helo(HOST).enhanced is None
    assert replies.ehlo(HOST, ("PIPELINING",)).enhanced is None


def test_every_reply_renders_to_crlf_terminated_lines_with_the_code_on_each() -> None:
    for name, reply in _catalogue():
        lines = reply_lines(reply.wire)
        assert lines, name
        assert all(line[:3] == str(reply.code) for line in lines), name
        assert all(line[3] == "-" for line in lines[:-1]) and lines[-1][3] == " ", name


# --- junk commands (Postfix's smtpd_junk_command_limit) --------------------------------------------------


def test_the_command_after_the_junk_limit_gets_421_and_closes() -> None:
    dialogue = greeted(Limits(junk_commands=5))
    codes = dialogue.codes(b"NOOP\r\nRSET\r\nVRFY x\r\nHELP\r\nNOOP\r\n")
    assert [code[:3] for code in codes] == ["250", "250", "252", "214", "250"]
    assert dialogue.say(b"NOOP\r\nNOOP\r\n") == [
        "421 4.7.0 Too many commands without mail, closing connection"
    ]
    assert dialogue.conn.closed


def test_an_accepted_message_resets_the_junk_count() -> None:
    dialogue = greeted(Limits(junk_commands=2))
    for _ in range(3):  # a reused connection: RSET and NOOP between messages, forever
        assert dialogue.codes(b"RSET\r\nNOOP\r\n" + TRANSACTION)[:2] == ["250 2.0.0", "250 2.0.0"]
        assert dialogue.codes(b"Subject: hi\r\n\r\nhello\r\n.\r\n") == ["250 2.0.0"]
        assert not dialogue.conn.closed
    assert len(dialogue.messages) == 3


def test_junk_limit_zero_means_no_limit() -> None:
    dialogue = greeted(Limits(junk_commands=0))
    assert set(dialogue.codes(b"NOOP\r\n" * 500)) == {"250 2.0.0"}


@pytest.mark.parametrize(
    "line", [b"GET / HTTP/1.1", b"POST /x HTTP/1.0", b"CONNECT mx.example.test:25 HTTP/1.1"]
)
def test_an_http_request_on_the_smtp_port_is_closed_at_once(line: bytes) -> None:
    dialogue = Dialogue()
    assert dialogue.say(line + b"\r\nHost: x\r\n\r\n") == [
        "421 4.7.0 This is an SMTP server, not a web server or proxy; closing connection"
    ]
    assert dialogue.conn.closed
