"""The seed tar pit on the wire: 5xx replies wait the configured delay; nothing else does.

Timing tests check that a delay happened (>= the delay) and that an undelayed reply is fast, with
generous tolerance for a loaded 2-core CI machine.
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from collections.abc import Callable

from tests.e2e.helpers import PASSWORD, RunningServer

DELAY = 1.0
FAST = 0.5  # an undelayed reply on loopback, with room for a busy machine


def _timed(call: Callable[[], tuple[int, bytes]]) -> tuple[int, float]:
    started = time.monotonic()
    code, _ = call()
    return code, time.monotonic() - started


def _in_transaction(server: RunningServer, **kwargs: object) -> smtplib.SMTP:
    smtp = smtplib.SMTP(server.host, server.port, timeout=30, **kwargs)  # type: ignore[arg-type]
    smtp.ehlo("client.test")
    smtp.mail("s@remote.test")
    return smtp


def test_unknown_recipient_waits_and_valid_recipient_does_not(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": DELAY})
    with _in_transaction(server) as smtp:
        code, took = _timed(lambda: smtp.rcpt("nobody@example.test"))
        assert (code, took >= DELAY) == (550, True)
        code, took = _timed(lambda: smtp.rcpt("alice@example.test"))
        assert (code, took < FAST) == (250, True)
        code, took = _timed(lambda: smtp.rcpt("victim@elsewhere.test"))
        assert (code, took >= DELAY) == (554, True)
        code, took = _timed(lambda: smtp.docmd("FROBNICATE"))
        assert (code, took >= DELAY) == (500, True)
    server.wait_for_log(r"session end .*errors=3 delayed=3\.0s")
    assert "delaying 550 reply to 127.0.0.1 by 1.000s" in server.log()


def test_tar_pit_is_off_by_default(server: RunningServer) -> None:
    with _in_transaction(server) as smtp:
        code, took = _timed(lambda: smtp.rcpt("nobody@example.test"))
    assert (code, took < FAST) == (550, True)


def test_4xx_replies_are_not_delayed(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": DELAY}, limits={"recipients_per_message": 1})
    with _in_transaction(server) as smtp:
        assert smtp.rcpt("alice@example.test")[0] == 250
        code, took = _timed(lambda: smtp.rcpt("bob@example.test"))
    assert (code, took < FAST) == (452, True)


def test_exempt_network_is_never_delayed(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": DELAY, "exempt_networks": ["127.0.0.0/8", "::1/128"]})
    with _in_transaction(server) as smtp:
        code, took = _timed(lambda: smtp.rcpt("nobody@example.test"))
    assert (code, took < FAST) == (550, True)


def test_authenticated_session_is_never_delayed(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(
        tarpit={"delay": DELAY}, auth={"users_file": "users.txt", "plaintext_from_loopback": True}
    )
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.login("alice", PASSWORD)
        smtp.mail("alice@example.test")
        code, took = _timed(lambda: smtp.rcpt("nobody@example.test"))
    assert (code, took < FAST) == (550, True)


def test_pipelined_errors_each_wait_their_own_delay_in_order(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": DELAY})
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(
            b"EHLO c.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<x@example.test>\r\n"
            b"RCPT TO:<alice@example.test>\r\nRCPT TO:<y@example.test>\r\nQUIT\r\n"
        )
        started = time.monotonic()
        arrivals = []
        while line := reader.readline():
            if line[3:4] == b" ":
                arrivals.append((int(line[:3]), time.monotonic() - started))
    assert [code for code, _ in arrivals] == [250, 250, 550, 250, 550, 221]
    assert arrivals[2][1] >= DELAY and arrivals[4][1] >= 2 * DELAY


def test_a_delay_does_not_block_other_sessions(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": 3})
    held = _in_transaction(server)
    waiter = threading.Thread(target=held.rcpt, args=("nobody@example.test",))
    waiter.start()
    time.sleep(0.2)  # the first session is now held in the tar pit
    try:
        with _in_transaction(server) as smtp:
            code, took = _timed(lambda: smtp.rcpt("alice@example.test"))
        assert (code, took < FAST) == (250, True)
    finally:
        waiter.join()
        held.close()


def test_idle_timeout_does_not_cut_a_delay_short(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": 2}, limits={"idle_timeout": 1})
    with _in_transaction(server) as smtp:
        code, took = _timed(lambda: smtp.rcpt("nobody@example.test"))
        assert (code, took >= 2) == (550, True)
        assert smtp.rcpt("alice@example.test")[0] == 250


def test_idle_client_gets_421_after_the_idle_timeout(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"idle_timeout": 1})
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        started = time.monotonic()
        line = reader.readline()
        assert line.startswith(b"421 4.4.2") and 0.9 <= time.monotonic() - started < 5
        assert reader.readline() == b""  # and the server closed the connection
    server.wait_for_log(r"session end .*outcome=timeout")
