"""STARTTLS and AUTH end to end with smtplib and raw sockets: what is offered when, what is accepted, what
the tar pit delays, and that plaintext injected before the handshake never runs (CVE-2011-0411)."""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import time
from typing import Any

import pytest

from tests.e2e.conftest import ServerFactory
from tests.e2e.helpers import PASSWORD, RunningServer

TLS = {"certificate": "cert.pem", "private_key": "key.pem"}
AUTH = {"users_file": "users.txt"}
HOSTNAME = "mx.example.test"


def _tls_server(make_server: ServerFactory, **extra: dict[str, Any]) -> RunningServer:
    return make_server(tls=TLS, auth=AUTH, **extra)


def _context(server: RunningServer) -> ssl.SSLContext:
    """Trusts only the test's own certificate; the hostname check stays on (the cert names 127.0.0.1)."""
    context = ssl.create_default_context(cafile=str(server.folder / "cert.pem"))
    assert context.check_hostname
    return context


def _client(server: RunningServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=10)


def _secured(server: RunningServer) -> smtplib.SMTP:
    """A client that has done EHLO, STARTTLS and EHLO again."""
    smtp = _client(server)
    smtp.ehlo("client.test")
    code, _ = smtp.starttls(context=_context(server))
    assert code == 220
    smtp.ehlo("client.test")
    return smtp


def _plain_response(password: str) -> str:
    return base64.b64encode(f"\0alice\0{password}".encode()).decode()


def _read_line(sock: socket.socket) -> bytes:
    """One line, byte by byte, so that nothing past it is consumed (the TLS handshake follows)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line


def _read_reply(sock: socket.socket) -> list[bytes]:
    lines = [_read_line(sock)]
    while lines[-1][3:4] == b"-":
        lines.append(_read_line(sock))
    return lines


# --- what is offered ----------------------------------------------------------------------------------------


def test_starttls_is_advertised_and_auth_is_not_before_tls(make_server: ServerFactory) -> None:
    server = _tls_server(make_server)
    with _client(server) as smtp:
        code, _ = smtp.ehlo("client.test")
        assert code == 250
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")


def test_ehlo_after_starttls_advertises_auth_plain_login_and_no_starttls(make_server: ServerFactory) -> None:
    server = _tls_server(make_server)
    with _secured(server) as smtp:
        assert isinstance(smtp.sock, ssl.SSLSocket)
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert not smtp.has_extn("starttls")
        code, message = smtp.docmd("STARTTLS")
        assert (code, message[:5]) == (503, b"5.5.1")


def test_starttls_without_a_certificate_is_not_offered_and_gets_502(server: RunningServer) -> None:
    with _client(server) as smtp:
        smtp.ehlo("client.test")
        assert not smtp.has_extn("starttls")
        code, message = smtp.docmd("STARTTLS")
        assert (code, message[:5]) == (502, b"5.5.1")
        assert smtp.noop()[0] == 250  # the session goes on in plaintext


# --- AUTH ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mechanism", "initial_response"),
    [("PLAIN", True), ("PLAIN", False), ("LOGIN", True), ("LOGIN", False)],
)
def test_auth_over_tls_accepts_the_right_password_and_refuses_a_wrong_one(
    make_server: ServerFactory, mechanism: str, initial_response: bool
) -> None:
    server = _tls_server(make_server)
    with _secured(server) as smtp:
        authobject = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        smtp.user, smtp.password = "alice", "wrong password"
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.auth(mechanism, authobject, initial_response_ok=initial_response)
        assert refused.value.smtp_code == 535
        assert refused.value.smtp_error == b"5.7.8 Authentication credentials invalid"
        smtp.password = PASSWORD
        code, message = smtp.auth(mechanism, authobject, initial_response_ok=initial_response)
        assert (code, message[:5]) == (235, b"2.7.0")
        smtp.ehlo("client.test")
        assert not smtp.has_extn("auth")  # nothing left to offer once authenticated
    assert f"user=alice mechanism={mechanism} result=failed" in server.log()
    assert f"user=alice mechanism={mechanism} result=ok" in server.log()


def test_auth_before_tls_gets_538_encryption_required(make_server: ServerFactory) -> None:
    server = _tls_server(make_server)
    with _client(server) as smtp:
        smtp.ehlo("client.test")
        code, message = smtp.docmd("AUTH", "PLAIN " + _plain_response(PASSWORD))
        assert (code, message[:6]) == (538, b"5.7.11")
        code, message = smtp.docmd("AUTH", "LOGIN")
        assert (code, message[:6]) == (538, b"5.7.11")
        assert smtp.mail("s@remote.test")[0] == 250  # still anonymous, still usable
    assert "result=ok" not in server.log()


def test_plaintext_auth_from_loopback_works_when_enabled(make_server: ServerFactory) -> None:
    server = make_server(auth={**AUTH, "plaintext_from_loopback": True})
    with _client(server) as smtp:
        smtp.ehlo("client.test")
        assert not smtp.has_extn("starttls")
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        code, message = smtp.login("alice", PASSWORD)
        assert (code, message[:5]) == (235, b"2.7.0")


# --- the tar pit and authentication -------------------------------------------------------------------------


def test_wrong_password_is_delayed_for_an_anonymous_session(make_server: ServerFactory) -> None:
    server = _tls_server(make_server, tarpit={"delay": 1})
    with _secured(server) as smtp:
        started = time.monotonic()
        code, message = smtp.docmd("AUTH", "PLAIN " + _plain_response("wrong password"))
        elapsed = time.monotonic() - started
    assert (code, message[:5]) == (535, b"5.7.8")
    assert elapsed >= 1.0


def test_unknown_recipient_is_delayed_for_anonymous_but_not_for_authenticated_sessions(
    make_server: ServerFactory,
) -> None:
    server = _tls_server(make_server, tarpit={"delay": 1})
    timings: dict[str, float] = {}
    for who in ("anonymous", "authenticated"):
        with _secured(server) as smtp:
            if who == "authenticated":
                assert smtp.login("alice", PASSWORD)[0] == 235
            assert smtp.mail("s@remote.test")[0] == 250
            started = time.monotonic()
            code, message = smtp.rcpt("nobody@example.test")
            timings[who] = time.monotonic() - started
            assert (code, message[:5]) == (550, b"5.1.1")
    assert timings["anonymous"] >= 1.0
    assert timings["authenticated"] < 0.5


# --- STARTTLS session rules ---------------------------------------------------------------------------------


def test_plaintext_pipelined_after_starttls_is_discarded_cve_2011_0411(make_server: ServerFactory) -> None:
    server = _tls_server(make_server)
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        assert _read_line(sock).startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n")
        assert _read_reply(sock)[-1].startswith(b"250 ")
        sock.sendall(b"STARTTLS\r\nRSET\r\n")  # one segment: RSET is injected before the handshake
        assert _read_line(sock) == b"220 2.0.0 Ready to start TLS\r\n"
        with _context(server).wrap_socket(sock, server_hostname=server.host) as tls:
            tls.sendall(b"EHLO client.test\r\n")
            ehlo = _read_reply(tls)
            tls.sendall(b"NOOP\r\n")
            noop = _read_reply(tls)
    # The first reply after the handshake answers our EHLO: no 250 for the injected RSET comes before it.
    assert ehlo[0] == f"250-{HOSTNAME}\r\n".encode()
    assert b"250 AUTH PLAIN LOGIN\r\n" in ehlo
    assert noop == [b"250 2.0.0 Ok\r\n"]


def test_command_sent_with_the_last_handshake_flight_is_answered(make_server: ServerFactory) -> None:
    """A client may send its first command right behind its Finished message, in one TCP segment (TLS 1.3
    clients do so whenever they are quick); the server must answer it, not drop it as pre-TLS plaintext."""
    server = _tls_server(make_server)
    with socket.create_connection((server.host, server.port), timeout=3) as sock:
        assert _read_line(sock).startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n")
        assert _read_reply(sock)[-1].startswith(b"250 ")
        sock.sendall(b"STARTTLS\r\n")
        assert _read_line(sock) == b"220 2.0.0 Ready to start TLS\r\n"
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = _context(server).wrap_bio(incoming, outgoing, server_hostname=server.host)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(b"EHLO client.test\r\n")
        sock.sendall(outgoing.read())  # the client's last handshake flight and EHLO, together
        received = b""
        try:
            while not received.endswith(b"\r\n") or b"\r\n250 " not in b"\r\n" + received:
                data = sock.recv(65536)
                assert data, f"connection closed; received {received!r}"
                incoming.write(data)
                while True:
                    try:
                        received += tls.read(65536)
                    except ssl.SSLWantReadError:
                        break
        except TimeoutError:
            pytest.fail(f"no reply to EHLO within 3 s (dropped?); received {received!r}")
    assert received.startswith(f"250-{HOSTNAME}\r\n".encode())
    assert received.endswith(b"250 AUTH PLAIN LOGIN\r\n")


def test_starttls_resets_the_session_so_mail_needs_a_new_ehlo(make_server: ServerFactory) -> None:
    server = _tls_server(make_server)
    with _client(server) as smtp:
        smtp.ehlo("client.test")
        assert smtp.starttls(context=_context(server))[0] == 220
        code, message = smtp.docmd("MAIL", "FROM:<s@remote.test>")
        assert (code, message[:5]) == (503, b"5.5.1")
        smtp.ehlo("client.test")
        assert smtp.mail("s@remote.test")[0] == 250


def test_received_header_says_esmtps_over_tls_and_esmtpsa_with_auth(make_server: ServerFactory) -> None:
    server = _tls_server(make_server)
    with _secured(server) as smtp:
        assert smtp.sendmail("s@remote.test", ["bob@example.test"], b"Subject: tls\r\n\r\nx\r\n") == {}
    with _secured(server) as smtp:
        smtp.login("alice", PASSWORD)
        assert smtp.sendmail("s@remote.test", ["alice@example.test"], b"Subject: auth\r\n\r\ny\r\n") == {}
    [anonymous] = server.messages("bob@example.test")
    [authenticated] = server.messages("alice@example.test")
    assert f"by {HOSTNAME} (smtp-tarpit) with ESMTPS id ".encode() in anonymous
    assert f"by {HOSTNAME} (smtp-tarpit) with ESMTPSA id ".encode() in authenticated
    assert authenticated.endswith(b"Subject: auth\n\ny\n")
