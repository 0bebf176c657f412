"""Envelope strings aimed at a shell, an expander or a log reader, and relaying for authenticated clients,
against a real server. The exact replies of the common cases are in corpus/06 to 12; here what needs more
than a transcript: that nothing was run, what reached the stored headers and the logs, relay mode.
"""

from __future__ import annotations

import base64
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerFactory
from tests.e2e.downstream import free_port
from tests.e2e.helpers import PASSWORD, RunningServer
from tests.hostile.conftest import ServerPool
from tests.hostile.transcript import delivered_since, maildir_files
from tests.hostile.wire import Client

SENDER_OK = b"250 2.1.0 Sender ok\r\n"
RECIPIENT_OK = b"250 2.1.5 Recipient ok\r\n"
RELAY_DENIED = b"554 5.7.1 Relay access denied\r\n"
RELAY_TRICKS = [
    b"user%other.test@example.test",
    b"other.test!user@example.test",
    b'"user@other.test"@example.test',
    b"@example.test:user%other.test@example.test",
    b"user%other.test@other.test",
]


def test_shell_syntax_in_the_envelope_is_stored_as_text_and_never_run(servers: ServerPool) -> None:
    server = servers.get()
    folder = Path(tempfile.mkdtemp(prefix="h"))  # short: the path goes into a 64-octet local part
    sentinel = folder / "r"
    helo = f"`touch${{IFS}}{sentinel}`".encode()
    sender = helo + b"@remote.test"
    recipient = f"${{run{{touch${{IFS}}{sentinel}}}}}|sh@catchall.test".encode()
    before = maildir_files(server)
    try:
        with Client(server.host, server.port) as client:
            assert client.reply().startswith(b"220 ")
            assert client.command(b"HELO " + helo) == b"250 mx.example.test\r\n"
            assert client.command(b"MAIL FROM:<" + sender + b">") == SENDER_OK
            assert client.command(b"RCPT TO:<" + recipient + b">") == RECIPIENT_OK
            client.send(b"DATA\r\nSubject: $(id) `id` ${run{id}}\r\n\r\nx\r\n.\r\n")
            assert client.lines(1) == b"354 End data with <CR><LF>.<CR><LF>\r\n"
            assert client.reply().startswith(b"250 2.0.0 Ok: queued as ")
        [(mailbox, content)] = delivered_since(server, before)
        assert (mailbox, content) == ("bob@example.test", b"Subject: $(id) `id` ${run{id}}\n\nx\n")
        [path] = maildir_files(server) - before
        stored = path.read_bytes()
        assert stored.startswith(b"Return-Path: <" + sender + b">\n")
        assert b"Received: from " + helo + b" ([127.0.0.1])" in stored
        assert b"for <" + recipient + b">;" in stored
        time.sleep(0.2)
        assert not sentinel.exists()
    finally:
        shutil.rmtree(folder)


def _log_since(server: RunningServer, offset: int, pattern: str) -> str:
    deadline = time.monotonic() + 10
    while not re.search(pattern, server.log()[offset:]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return server.log()[offset:]


def test_envelope_text_cannot_forge_fields_in_the_log_lines(servers: ServerPool) -> None:
    """fail2ban and log queries read key=value pairs: a quoted local part full of them stays one field."""
    server = servers.get()
    forged = b'"x client=203.0.113.9 result=refused outcome=quit"@remote.test'
    logged = len(server.log())
    with Client(server.host, server.port) as client:
        assert client.reply().startswith(b"220 ")
        client.send(
            b"HELO forged.example\r\nMAIL FROM:<" + forged + b">\r\nRCPT TO:<alice@example.test>\r\n"
            b"DATA\r\nx\r\n.\r\nQUIT\r\n"
        )
        assert client.lines(6).endswith(b"221 2.0.0 mx.example.test closing connection\r\n")
    log = _log_since(server, logged, r"session end client=127\.0\.0\.1 .*helo=forged\.example")
    [line] = [line for line in log.splitlines() if " message id=" in line]
    assert 'from=<"x?client=203.0.113.9?result=refused?outcome=quit"@remote.test>' in line
    assert re.search(r" client=127\.0\.0\.1 .* result=delivered ", line)
    assert "203.0.113.9" not in log.replace("?client=203.0.113.9?", "")


@pytest.mark.parametrize("mode", ["maildir", "relay"])
def test_authenticated_clients_relay_only_what_the_config_allows(
    make_server: ServerFactory, mode: str
) -> None:
    """Maildir mode has nowhere to relay to; relay mode passes an authenticated client's other domains on
    to the downstream (which decides), but never an address that could route elsewhere."""
    delivery = {"relay": f"smtp://127.0.0.1:{free_port()}", "relay_timeout": "2s"} if mode == "relay" else {}
    server = make_server(auth={"users_file": "users.txt", "plaintext_from_loopback": True}, delivery=delivery)
    credentials = base64.b64encode(f"\0alice\0{PASSWORD}".encode())
    with Client(server.host, server.port) as client:
        assert client.reply().startswith(b"220 ")
        assert client.command(b"EHLO client.example").endswith(b"250 AUTH PLAIN LOGIN\r\n")
        assert client.command(b"MAIL FROM:<s@remote.test>") == SENDER_OK
        assert client.command(b"RCPT TO:<user@other.test>") == RELAY_DENIED  # anonymous: never
        assert client.command(b"RSET") == b"250 2.0.0 Ok\r\n"
        assert client.command(b"AUTH PLAIN " + credentials) == b"235 2.7.0 Authentication successful\r\n"
        assert client.command(b"MAIL FROM:<alice@example.test>") == SENDER_OK
        allowed = RECIPIENT_OK if mode == "relay" else RELAY_DENIED
        assert client.command(b"RCPT TO:<user@other.test>") == allowed
        for trick in RELAY_TRICKS:
            assert client.command(b"RCPT TO:<" + trick + b">") == RELAY_DENIED, trick
        assert client.command(b"RSET") == b"250 2.0.0 Ok\r\n"
