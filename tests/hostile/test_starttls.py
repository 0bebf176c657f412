"""STARTTLS plaintext injection (CVE-2011-0411, CVE-2024-34083) against a real server, beyond what
tests/e2e/test_tls_auth.py covers (one RSET in the STARTTLS segment): a whole transaction and an AUTH with
the right password injected, half a command line injected, plaintext sent after the 220 and before the
handshake. Nothing injected may run after the handshake, nothing may be delivered, the session starts over.
"""

from __future__ import annotations

import base64
import ssl
import time

from tests.e2e.helpers import PASSWORD, RunningServer
from tests.hostile.conftest import ServerPool
from tests.hostile.transcript import HOST, delivered_since, maildir_files
from tests.hostile.wire import Client

TLS_AUTH = {
    "tls": {"certificate": "cert.pem", "private_key": "key.pem"},
    "auth": {"users_file": "users.txt"},
}
AUTH_PLAIN = b"AUTH PLAIN " + base64.b64encode(f"\0alice\0{PASSWORD}".encode())
READY = b"220 2.0.0 Ready to start TLS\r\n"
INJECTED = (
    AUTH_PLAIN + b"\r\nEHLO injected.example\r\nMAIL FROM:<injected@evil.test>\r\n"
    b"RCPT TO:<alice@example.test>\r\nDATA\r\nSubject: injected\r\n\r\nowned\r\n.\r\n"
)
EHLO_AFTER_TLS = (
    f"250-{HOST}\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"
    "250-SMTPUTF8\r\n250 AUTH PLAIN LOGIN\r\n"
).encode()


def _context(server: RunningServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.folder / "cert.pem"))


def _greeted(server: RunningServer) -> Client:
    client = Client(server.host, server.port)
    assert client.reply().startswith(b"220 ")
    assert client.command(b"EHLO client.example").endswith(b"250 STARTTLS\r\n")
    return client


def _handshake(client: Client, server: RunningServer) -> None:
    client.sock = _context(server).wrap_socket(client.sock, server_hostname=server.host)


def _fresh_session_after_tls(client: Client) -> None:
    """The session after the handshake: no HELO yet, not authenticated, no transaction."""
    assert client.command(b"MAIL FROM:<s@remote.test>") == b"503 5.5.1 Send HELO or EHLO first\r\n"
    assert client.command(b"EHLO client.example") == EHLO_AFTER_TLS  # AUTH offered: not authenticated
    assert client.command(b"RCPT TO:<alice@example.test>") == b"503 5.5.1 Need MAIL command first\r\n"
    assert client.command(b"NOOP") == b"250 2.0.0 Ok\r\n"


def test_auth_and_transaction_pipelined_behind_starttls_never_run(servers: ServerPool) -> None:
    server = servers.get(TLS_AUTH)
    before, logged = maildir_files(server), len(server.log())
    with _greeted(server) as client:
        client.send(b"STARTTLS\r\n" + INJECTED)
        assert client.lines(1) == READY
        _handshake(client, server)
        _fresh_session_after_tls(client)
    assert delivered_since(server, before) == []
    assert "auth client=" not in server.log()[logged:]  # no password was even checked


def test_half_a_command_line_behind_starttls_is_dropped(servers: ServerPool) -> None:
    server = servers.get(TLS_AUTH)
    with _greeted(server) as client:
        client.send(b"STARTTLS\r\nMAIL FROM:<half")
        assert client.lines(1) == READY
        _handshake(client, server)
        # Had the half line survived, this would complete "MAIL FROM:<half@evil.test>" (503: no EHLO).
        assert client.command(b"@evil.test>") == b"500 5.5.1 Command unrecognized\r\n"
        _fresh_session_after_tls(client)


def test_plaintext_sent_after_the_220_and_before_the_handshake_never_runs(servers: ServerPool) -> None:
    server = servers.get(TLS_AUTH)
    before, logged = maildir_files(server), len(server.log())
    with _greeted(server) as client:
        client.send(b"STARTTLS\r\n")
        assert client.lines(1) == READY
        client.send(INJECTED)  # a man in the middle, after the 220, ahead of the ClientHello
        time.sleep(0.2)
        spare = client.sock.dup()  # the handshake closes the socket it wraps when it fails
        try:
            _handshake(client, server)
        except (ssl.SSLError, ConnectionError):
            # The server read the injected bytes as TLS and gave up: closed, nothing answered, nothing run.
            client.sock = spare
            assert client.rest() == b""
            assert client.eof
        else:
            spare.close()
            _fresh_session_after_tls(client)
    assert delivered_since(server, before) == []
    assert "auth client=" not in server.log()[logged:]  # no password was even checked


def test_a_second_starttls_inside_tls_is_refused_and_changes_nothing(servers: ServerPool) -> None:
    server = servers.get(TLS_AUTH)
    with _greeted(server) as client:
        client.send(b"STARTTLS\r\n")
        assert client.lines(1) == READY
        _handshake(client, server)
        assert client.command(b"EHLO client.example") == EHLO_AFTER_TLS
        client.send(b"STARTTLS\r\n" + AUTH_PLAIN + b"\r\n")
        assert client.lines(2) == b"503 5.5.1 TLS already active\r\n235 2.7.0 Authentication successful\r\n"
