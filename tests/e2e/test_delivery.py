"""End to end over real sockets with smtplib: what is accepted lands in the Maildir, whole."""

from __future__ import annotations

import signal
import smtplib
import socket

from tests.e2e.helpers import RunningServer


def _client(server: RunningServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=10)


def test_accepted_message_lands_in_the_mailbox_with_trace_headers(server: RunningServer) -> None:
    with _client(server) as smtp:
        refused = smtp.sendmail("sender@remote.test", ["alice@example.test"], b"Subject: hi\r\n\r\nbody\r\n")
    assert refused == {}
    [stored] = server.messages("alice@example.test")
    assert stored.startswith(b"Return-Path: <sender@remote.test>\nReceived: from ")
    assert b"by mx.example.test (smtp-tarpit) with ESMTP id " in stored
    assert stored.endswith(b"Subject: hi\n\nbody\n")


def test_alias_and_catch_all_deliver_into_the_target_mailbox(server: RunningServer) -> None:
    with _client(server) as smtp:
        smtp.sendmail("s@remote.test", ["sales@example.test"], b"Subject: alias\r\n\r\nx\r\n")
        smtp.sendmail("s@remote.test", ["anything@catchall.test"], b"Subject: catch\r\n\r\nx\r\n")
    assert any(b"Subject: alias" in m for m in server.messages("alice@example.test"))
    assert any(b"Subject: catch" in m for m in server.messages("bob@example.test"))


def test_one_message_to_two_mailboxes_is_stored_once_in_each(server: RunningServer) -> None:
    with _client(server) as smtp:
        smtp.sendmail(
            "s@remote.test",
            ["alice@example.test", "sales@example.test", "bob@example.test"],
            b"Subject: two\r\n\r\nx\r\n",
        )
    assert len(server.messages("alice@example.test")) == 1
    assert len(server.messages("bob@example.test")) == 1


def test_unknown_recipient_relay_and_tricks_are_refused(server: RunningServer) -> None:
    with _client(server) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        assert smtp.rcpt("nobody@example.test")[0] == 550
        assert smtp.rcpt("victim@elsewhere.test")[0] == 554
        assert smtp.rcpt("victim%elsewhere.test@example.test")[0] == 554
        assert smtp.rcpt("elsewhere.test!victim@example.test")[0] == 554
        assert smtp.rcpt('"victim@elsewhere.test"@example.test')[0] == 554
        assert smtp.rcpt("<@example.test:victim@elsewhere.test>")[0] == 554
        assert smtp.rcpt("<@relay.test:alice@example.test>")[0] == 250


def test_postmaster_is_always_accepted(server: RunningServer) -> None:
    with _client(server) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("")
        assert smtp.rcpt("<postmaster>")[0] == 250
        assert smtp.rcpt("PostMaster@catchall.test")[0] == 250
        assert smtp.rcpt("postmaster@example.test")[0] == 250
        code, _ = smtp.data(b"Subject: to postmaster\r\n\r\nx\r\n")
    assert code == 250
    assert server.messages("postmaster@example.test")


def test_vrfy_never_tells_which_addresses_exist(server: RunningServer) -> None:
    with _client(server) as smtp:
        assert smtp.verify("alice@example.test") == smtp.verify("nobody@example.test")
        assert smtp.verify("nobody@example.test")[0] == 252


def test_pipelined_commands_are_answered_in_order(server: RunningServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(
            b"EHLO client.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<nobody@example.test>\r\n"
            b"RCPT TO:<alice@example.test>\r\nDATA\r\nSubject: p\r\n\r\npipelined\r\n.\r\nQUIT\r\n"
        )
        codes = []
        while True:
            line = reader.readline()
            if not line:
                break
            if line[3:4] == b" ":
                codes.append(int(line[:3]))
    assert codes == [250, 250, 550, 250, 354, 250, 221]
    assert server.messages()[0].endswith(b"pipelined\n")


def test_oversize_message_gets_552_and_the_session_stays_usable(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"message_size": 2048})
    with _client(server) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        smtp.rcpt("alice@example.test")
        code, _ = smtp.data(b"Subject: big\r\n\r\n" + b"x" * 100 + b"\r\n" * 50 + b"y" * 999 * 3)
        assert code == 552
        refused = smtp.sendmail("s@remote.test", ["alice@example.test"], b"Subject: small\r\n\r\nx\r\n")
        assert refused == {}
    assert [b"Subject: small" in m for m in server.messages()] == [True]


def test_bare_newline_rejected_when_configured(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(server={"bare_newline": "reject"})
    with _client(server) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        smtp.rcpt("alice@example.test")
        smtp.putcmd("DATA")
        assert smtp.getreply()[0] == 354
        smtp.send(b"Subject: smuggle\r\n\r\nx\n.\nMAIL FROM:<a@b.c>\r\n.\r\n")
        assert smtp.getreply()[0] == 554
    assert server.messages() == []


def test_smuggled_dot_is_normalised_into_the_message_by_default(server: RunningServer) -> None:
    with _client(server) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        smtp.rcpt("alice@example.test")
        smtp.putcmd("DATA")
        assert smtp.getreply()[0] == 354
        smtp.send(b"Subject: smuggle\r\n\r\nx\n.\nMAIL FROM:<a@b.c>\r\n.\r\n")
        assert smtp.getreply()[0] == 250
        smtp.quit()
    [stored] = server.messages()
    # One message: the "." reached through bare LFs is text, kept as a line of its own.
    assert stored.endswith(b"Subject: smuggle\n\nx\n.\nMAIL FROM:<a@b.c>\n")


def test_too_many_connections_get_421(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"max_connections": 2})
    held = [_client(server), _client(server)]
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        assert sock.makefile("rb").readline().startswith(b"421 4.7.0")
    for smtp in held:
        smtp.quit()


def test_sigterm_exits_zero(server: RunningServer) -> None:
    assert server.stop() == 0
    assert "stopped" in server.log()


def test_a_delivery_failure_is_a_451_never_a_250(server: RunningServer) -> None:
    server.maildir.mkdir(exist_ok=True)
    (server.maildir / "example.test").write_text("a file where the domain folder should be")
    with _client(server) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        smtp.rcpt("alice@example.test")
        code, text = smtp.data(b"Subject: lost?\r\n\r\nx\r\n")
        assert (code, text[:5]) == (451, b"4.3.0")
        assert b"Errno" not in text and b"example.test" not in text  # no internals shown
    server.wait_for_log(r"message id=\w+ .* result=deferred")


def test_sighup_reloads_the_recipients_file(server: RunningServer) -> None:
    (server.folder / "recipients.txt").write_text("alice@example.test\nnewcomer@example.test\n")
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log(r"reloaded \S+: 2 addresses")
    with _client(server) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        assert smtp.rcpt("newcomer@example.test")[0] == 250
        assert smtp.rcpt("bob@example.test")[0] == 550
    (server.folder / "recipients.txt").write_text("bad@elsewhere.test\n")
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log(r"reload refused, keeping the running configuration")
    with _client(server) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        assert smtp.rcpt("newcomer@example.test")[0] == 250


def test_ipv6_listener_and_exempt_ipv6_network(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(server={"listen": ["[::1]:0"]}, tarpit={"delay": 2, "exempt_networks": ["::1/128"]})
    assert server.host == "::1"
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        assert smtp.rcpt("alice@example.test")[0] == 250
        assert smtp.rcpt("nobody@example.test")[0] == 550  # at once: ::1 is exempt
    server.wait_for_log(r"session end client=::1 .*delayed=0\.0s")
