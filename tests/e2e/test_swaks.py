"""End to end with swaks, the SMTP test tool operators use: delivery, the tar pit as swaks sees it,
PIPELINING, and STARTTLS with AUTH PLAIN."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.e2e.conftest import ServerFactory
from tests.e2e.helpers import PASSWORD, RunningServer

SWAKS = shutil.which("swaks")
pytestmark = pytest.mark.skipif(SWAKS is None, reason="swaks is not installed")


def _swaks(
    server: RunningServer, *options: str, to: str = "alice@example.test"
) -> subprocess.CompletedProcess[str]:
    assert SWAKS is not None
    command = [
        SWAKS, "--server", server.host, "--port", str(server.port), "--helo", "client.test",
        "--from", "sender@remote.test", "--to", to, "--timeout", "10", *options,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def test_swaks_delivers_a_message_into_the_maildir(server: RunningServer) -> None:
    result = _swaks(server, "--header", "Subject: from swaks", "--body", "swaks body")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 Ok: queued as " in result.stdout
    [stored] = server.messages()
    assert b"Subject: from swaks\n" in stored
    assert b"swaks body" in stored
    assert b" with ESMTP id " in stored


def test_swaks_to_an_unknown_recipient_waits_for_the_tarpit_and_sees_550(make_server: ServerFactory) -> None:
    server = make_server(tarpit={"delay": 1})
    started = time.monotonic()
    result = _swaks(server, to="nobody@example.test")
    elapsed = time.monotonic() - started
    assert result.returncode == 24  # swaks: "error in RCPT TO"
    assert "<** 550 5.1.1 " in result.stdout
    assert elapsed >= 1.0
    assert server.messages() == []


def test_swaks_pipelines_a_transaction_answered_in_order_around_a_delayed_550(
    make_server: ServerFactory,
) -> None:
    server = make_server(tarpit={"delay": 1})
    started = time.monotonic()
    result = _swaks(
        server, "--pipeline", "--header", "Subject: pipelined", to="nobody@example.test,alice@example.test"
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    # swaks shows the pipelined commands as one block sent before any of their replies, then the replies.
    assert (
        " -> MAIL FROM:<sender@remote.test>\n"
        " -> RCPT TO:<nobody@example.test>\n -> RCPT TO:<alice@example.test>\n -> DATA\n"
        "<-  250 2.1.0 Sender ok\n<** 550 5.1.1 Recipient address rejected: user unknown\n"
        "<-  250 2.1.5 Recipient ok\n<-  354 "
    ) in result.stdout
    assert elapsed >= 1.0
    [stored] = server.messages()
    assert b"Subject: pipelined\n" in stored


def test_swaks_starttls_with_auth_plain_delivers_as_esmtpsa(make_server: ServerFactory) -> None:
    server = make_server(
        tls={"certificate": "cert.pem", "private_key": "key.pem"}, auth={"users_file": "users.txt"}
    )
    result = _swaks(
        server, "-tls", "--tls-verify", "--tls-ca-path", str(server.folder / "cert.pem"),
        "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", PASSWORD,
        "--header", "Subject: tls and auth",
    )  # fmt: skip
    output = result.stdout + result.stderr
    if "TLS" in output and ("not available" in output or "requires" in output):
        pytest.skip(f"swaks cannot do TLS here: {output.strip().splitlines()[0]}")
    assert result.returncode == 0, output
    assert "<-  220 2.0.0 Ready to start TLS" in result.stdout
    assert "<~  235 2.7.0 Authentication successful" in result.stdout
    [stored] = server.messages()
    assert b" with ESMTPSA id " in stored
    assert b"Subject: tls and auth\n" in stored
