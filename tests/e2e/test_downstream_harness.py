"""The downstream harness itself: a private Postfix and smtp-sink behave as relay tests will rely on."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import downstream
from tests.e2e.downstream import (
    PostfixFactory,
    PostfixInstance,
    SmtpSink,
    pid_alive,
    start_postfix,
    start_smtp_sink,
)

# The fixtures, as relay tests will use them (a conftest can do the same).
make_postfix = downstream.make_postfix
postfix = downstream.postfix

MESSAGE = b"From: sender@remote.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nbody\r\n.leading dot\r\n"


def _client(address: tuple[str, int]) -> smtplib.SMTP:
    return smtplib.SMTP(*address, timeout=10)


class _Raw:
    """A line-oriented raw client, for LMTP and for what smtplib hides; survives a read timeout."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buffer = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"connection closed, unread: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> list[bytes]:
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return lines

    def command(self, line: bytes) -> list[bytes]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    started = start_smtp_sink(tmp_path / "sink")
    yield started
    started.stop()


# --------------------------------------------------------------------------------------------------- Postfix


def test_postfix_delivers_a_message_to_a_known_mailbox_intact(postfix: PostfixInstance) -> None:
    with _client(postfix.address) as smtp:
        assert smtp.sendmail("sender@remote.test", ["alice@example.test"], MESSAGE) == {}
    [stored] = postfix.wait_for_messages("alice@example.test", 1)
    assert stored.startswith(b"Return-Path: <sender@remote.test>\n")
    assert b"Delivered-To: alice@example.test\n" in stored
    assert b"by downstream.example.test (Postfix) with ESMTP id " in stored
    # Exactly what was sent (LF line ends, dot-unstuffed), no header added or rewritten below Received:.
    assert stored.endswith(b"\n" + MESSAGE.replace(b"\r\n", b"\n"))
    assert postfix.messages("bob@example.test") == []


def test_postfix_rejects_an_unknown_user_at_rcpt(postfix: PostfixInstance) -> None:
    with _client(postfix.address) as smtp:
        smtp.ehlo()
        assert smtp.mail("sender@remote.test")[0] == 250
        code, text = smtp.rcpt("nobody@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert smtp.rcpt("bob@example.test")[0] == 250
    postfix.wait_for_log(r"reject: RCPT from \S+: 550 5\.1\.1 <nobody@example\.test>")


def test_postfix_advertises_and_honours_xforward_for_a_loopback_client(postfix: PostfixInstance) -> None:
    with _client(postfix.address) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("xforward")
        assert "ADDR" in smtp.esmtp_features["xforward"].split()
        code, _ = smtp.docmd(
            "XFORWARD", "NAME=client.remote.test ADDR=192.0.2.7 PROTO=ESMTP HELO=client.remote.test"
        )
        assert code == 250
        assert smtp.sendmail("sender@remote.test", ["bob@example.test"], MESSAGE) == {}
    postfix.wait_for_messages("bob@example.test", 1)
    postfix.wait_for_log(
        r"client=localhost\[127\.0\.0\.1\], orig_client=client\.remote\.test\[192\.0\.2\.7\]"
    )


def test_smtpd_options_reach_postfix(tmp_path: Path) -> None:
    with start_postfix(
        tmp_path / "pf", ["carol@other.test"], smtpd_options={"smtpd_data_restrictions": "reject"}
    ) as instance:
        with _client(instance.address) as smtp:
            smtp.ehlo()
            smtp.mail("sender@remote.test")
            assert smtp.rcpt("carol@other.test")[0] == 250
            assert smtp.docmd("DATA")[0] == 554
        assert instance.messages("carol@other.test") == []


def test_postfix_stop_leaves_no_process_behind(make_postfix: PostfixFactory) -> None:
    instance = make_postfix(["alice@example.test"])
    with _client(instance.address) as smtp:  # a session spawns smtpd, then cleanup, qmgr, virtual...
        smtp.sendmail("sender@remote.test", ["alice@example.test"], MESSAGE)
    instance.wait_for_messages("alice@example.test", 1)
    pids = instance.pids()
    assert instance.master_pid == int((instance.queue_dir / "pid" / "master.pid").read_text())
    assert len(pids) > 3
    instance.stop()
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert not instance.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(instance.address, timeout=2).close()


def test_postfix_going_away_mid_session(make_postfix: PostfixFactory) -> None:
    instance = make_postfix(["alice@example.test"])
    smtp = _client(instance.address)
    try:
        smtp.ehlo()
        smtp.mail("sender@remote.test")
        pids = instance.pids()
        instance.stop_abruptly()
        assert [pid for pid in pids if pid_alive(pid)] == []
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.rcpt("alice@example.test")
    finally:
        smtp.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(instance.address, timeout=2).close()
    instance.stop()  # a no-op now


def test_postfix_killing_sessions_keeps_the_listener(postfix: PostfixInstance) -> None:
    smtp = _client(postfix.address)
    try:
        smtp.ehlo()
        smtp.mail("sender@remote.test")
        assert postfix.kill_sessions() != []
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.rcpt("alice@example.test")
    finally:
        smtp.close()
    with _client(postfix.address) as again:
        assert again.sendmail("sender@remote.test", ["alice@example.test"], MESSAGE) == {}
    postfix.wait_for_messages("alice@example.test", 1)


def test_a_frozen_postfix_accepts_connections_but_never_greets(postfix: PostfixInstance) -> None:
    postfix.freeze()
    raw = _Raw(postfix.address, timeout=0.5)
    try:
        with pytest.raises(TimeoutError):
            raw.reply()
        postfix.thaw()
        raw.sock.settimeout(5)
        assert raw.reply()[0].startswith(b"220 downstream.example.test")
    finally:
        raw.close()


# ------------------------------------------------------------------------------------------------- smtp-sink


def test_smtp_sink_saves_each_completed_message(sink: SmtpSink) -> None:
    with _client(sink.address) as smtp:
        smtp.ehlo("relay.example.test")
        smtp.mail("abandoned@remote.test")
        smtp.rcpt("alice@example.test")
        assert sink.messages() == []  # an open transaction is not listed
        smtp.rset()
        refused = smtp.sendmail("sender@remote.test", ["alice@example.test", "bob@example.test"], MESSAGE)
        assert refused == {}
    [raw] = sink.messages()
    assert raw.startswith(b"X-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTP\n")
    [message] = sink.parsed_messages()
    assert message.helo == "relay.example.test"
    assert message.sender == "sender@remote.test"
    assert message.recipients == ["alice@example.test", "bob@example.test"]
    assert message.data == MESSAGE.replace(b"\r\n", b"\n")


def test_smtp_sink_in_lmtp_mode_replies_once_per_recipient(tmp_path: Path) -> None:
    with start_smtp_sink(tmp_path / "lmtp", lmtp=True) as lmtp:
        raw = _Raw(lmtp.address)
        try:
            assert raw.reply()[0].startswith(b"220 ")
            assert raw.command(b"EHLO relay.example.test")[0].startswith(b"500 ")  # LMTP wants LHLO
            assert raw.command(b"LHLO relay.example.test")[-1].startswith(b"250 ")
            assert raw.command(b"MAIL FROM:<sender@remote.test>") == [b"250 2.1.0 Ok"]
            assert raw.command(b"RCPT TO:<alice@example.test>") == [b"250 2.1.5 Ok"]
            assert raw.command(b"RCPT TO:<bob@example.test>") == [b"250 2.1.5 Ok"]
            assert raw.command(b"DATA")[0].startswith(b"354 ")
            raw.sock.sendall(b"Subject: lmtp\r\n\r\nbody\r\n.\r\n")
            assert [raw.reply(), raw.reply()] == [[b"250 2.2.0 Ok"], [b"250 2.2.0 Ok"]]
            assert raw.command(b"QUIT")[0].startswith(b"221")
        finally:
            raw.close()
        [message] = lmtp.parsed_messages()
        assert (message.proto, message.helo) == ("LMTP", "relay.example.test")
        assert message.recipients == ["alice@example.test", "bob@example.test"]
        assert message.data == b"Subject: lmtp\n\nbody\n"


def test_smtp_sink_lmtp_rejection_at_dot_is_per_recipient(tmp_path: Path) -> None:
    with start_smtp_sink(tmp_path / "lmtp", lmtp=True, options=["-r", "."]) as lmtp:
        raw = _Raw(lmtp.address)
        try:
            raw.reply()
            raw.command(b"LHLO relay.example.test")
            raw.command(b"MAIL FROM:<sender@remote.test>")
            raw.command(b"RCPT TO:<alice@example.test>")
            raw.command(b"RCPT TO:<bob@example.test>")
            raw.command(b"DATA")
            raw.sock.sendall(b"Subject: lmtp\r\n\r\nbody\r\n.\r\n")
            assert [raw.reply()[0][:3], raw.reply()[0][:3]] == [b"450", b"450"]
        finally:
            raw.close()


@pytest.mark.parametrize(
    ("options", "command", "expected"),
    [
        (["-f", "RCPT"], "rcpt", 500),
        (["-r", "RCPT"], "rcpt", 450),
        (["-f", "MAIL"], "mail", 500),
        (["-r", "DATA"], "data", 450),
        (["-f", "."], "dot", 500),
        (["-Q", "RCPT"], "rcpt", 421),
    ],
)
def test_smtp_sink_options_make_commands_fail(
    tmp_path: Path, options: list[str], command: str, expected: int
) -> None:
    with start_smtp_sink(tmp_path / "sink", options=options) as failing, _client(failing.address) as smtp:
        smtp.ehlo()
        replies = {"mail": smtp.mail("sender@remote.test")[0]}
        if command != "mail":
            replies["rcpt"] = smtp.rcpt("alice@example.test")[0]
        if command in ("data", "dot"):
            smtp.putcmd("data")
            replies["data"] = smtp.getreply()[0]
        if command == "dot":
            smtp.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
            replies["dot"] = smtp.getreply()[0]
        assert replies[command] == expected
        assert all(code in {250, 354} for name, code in replies.items() if name != command)
    # smtp-sink dumps the message before it answers the final dot: one rejected at '.' is still recorded.
    assert len(failing.messages()) == (1 if command == "dot" else 0)


def test_smtp_sink_silent_disconnect(tmp_path: Path) -> None:
    with (
        start_smtp_sink(tmp_path / "sink", options=["-q", "RCPT"]) as failing,
        _client(failing.address) as smtp,
    ):
        smtp.ehlo()
        smtp.mail("sender@remote.test")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.rcpt("alice@example.test")


def test_smtp_sink_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    first = start_smtp_sink(tmp_path / "one")
    second = start_smtp_sink(tmp_path / "two")
    assert pid_alive(first.pid) and pid_alive(second.pid)
    first.stop()
    smtp = _client(second.address)
    try:
        smtp.ehlo()
        second.stop_abruptly()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.mail("sender@remote.test")
    finally:
        smtp.close()
    assert not pid_alive(first.pid) and not pid_alive(second.pid)
    for gone in (first, second):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(gone.address, timeout=2).close()


def test_a_taken_port_is_reported_not_mistaken_for_the_sink(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AssertionError, match=f"port {port} taken"):
            start_smtp_sink(tmp_path / "sink", port=port)


def test_missing_binaries_skip_with_the_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(downstream, "POSTFIX", tmp_path / "no-postfix")
    monkeypatch.setattr(downstream, "SMTP_SINK", tmp_path / "no-smtp-sink")
    with pytest.raises(pytest.skip.Exception, match="no-postfix is missing"):
        start_postfix(tmp_path / "pf", ["alice@example.test"])
    with pytest.raises(pytest.skip.Exception, match="no-smtp-sink is missing"):
        start_smtp_sink(tmp_path / "sink")
