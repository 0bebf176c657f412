"""AUTH brute force and leaks against a real server: a wrong password waits ``[tarpit] auth_failure_delay``,
escalating within the session and, with reputation on, on the same client's next connection, but not for
another client; pipelined guesses wait one after another; the right password still works (a delay, no
lockout); no reply, whatever fails inside, shows internals. (AUTH before STARTTLS: corpus/13.)

Timing asserts only lower bounds with the delays chosen far apart, and upper bounds with a wide margin:
two cores, shared with other test runs.
"""

from __future__ import annotations

import base64
import time

from tests.e2e.conftest import ServerFactory
from tests.e2e.helpers import PASSWORD, RunningServer
from tests.hostile.transcript import delivered_since, maildir_files
from tests.hostile.wire import Client

FAILED = b"535 5.7.8 Authentication credentials invalid\r\n"
OK = b"235 2.7.0 Authentication successful\r\n"
AUTH_DELAY = 0.4


def _plain(password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0alice\0{password}".encode())


def _session(server: RunningServer, source: str = "127.0.0.1") -> Client:
    client = Client(server.host, server.port, timeout=30, source=source)
    assert client.reply().startswith(b"220 ")
    assert client.command(b"EHLO client.example").endswith(b"250 AUTH PLAIN LOGIN\r\n")
    return client


def _timed(client: Client, line: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    reply = client.command(line)
    return reply, time.monotonic() - started


def test_password_guessing_is_slowed_per_client_and_remembered(make_server: ServerFactory) -> None:
    server = make_server(
        auth={"users_file": "users.txt", "plaintext_from_loopback": True},
        tarpit={"auth_failure_delay": AUTH_DELAY, "growth": 2, "max_delay": 3},
        reputation={"half_life": "1h"},
    )
    with _session(server) as client:
        started = time.monotonic()
        client.send(_plain("guess 1") + b"\r\n" + _plain("guess 2") + b"\r\n")  # pipelined: one at a time
        assert client.lines(2) == FAILED * 2
        first_session = time.monotonic() - started
    # 0.4 s, then 0.8 s (the second error of the session).
    assert first_session >= 3 * AUTH_DELAY - 0.05
    with _session(server) as client:
        reply, remembered = _timed(client, _plain("guess 3"))
        assert reply == FAILED
        reply, elapsed = _timed(client, _plain(PASSWORD))
        assert reply == OK  # slowed down, never locked out
        assert elapsed < 2.0  # and success is not delayed
    # The same client's next connection starts where the last one left off: 0.4 s x 2^4, capped at 3 s.
    assert remembered >= 2.5
    with _session(server, source="127.0.2.3") as other:  # another /24: its own record, a clean one
        reply, elapsed = _timed(other, _plain("guess"))
        assert reply == FAILED
    assert AUTH_DELAY - 0.05 <= elapsed < 2.0
    log = server.log()
    assert log.count("user=alice mechanism=PLAIN result=failed") == 4
    assert log.count("user=alice mechanism=PLAIN result=ok") == 1


def test_a_failing_delivery_is_a_plain_451_with_nothing_stored_and_no_internals(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    (server.maildir / "example.test").mkdir(parents=True)
    (server.maildir / "example.test" / "bob").write_text("a file where bob's Maildir should be")
    before = maildir_files(server)
    with Client(server.host, server.port) as client:
        assert client.reply().startswith(b"220 ")
        client.send(
            b"HELO c\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
            b"RCPT TO:<bob@example.test>\r\nDATA\r\nx\r\n.\r\n"
        )
        assert client.lines(5).endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        # Checked by Client for tracebacks, paths and exception names, as every reply in this package is.
        assert client.reply() == b"451 4.3.0 Temporary local problem, please try again later\r\n"
        assert delivered_since(server, before) == []  # not even alice's copy: all or nothing
        client.send(b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\ny\r\n.\r\n")
        assert client.lines(3).endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        assert client.reply().startswith(b"250 2.0.0 Ok: queued as ")
    assert delivered_since(server, before) == [("alice@example.test", b"y\n")]
    server.wait_for_log(r"result=deferred detail=")
