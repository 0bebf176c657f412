"""The adaptive tar pit on the wire: escalation, memory across connections, harvest defence, caps."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Callable

from tests.e2e.helpers import RunningServer

FAST = 0.5


def _timed(call: Callable[[], tuple[int, bytes]]) -> tuple[int, float]:
    started = time.monotonic()
    code, _ = call()
    return code, time.monotonic() - started


def _session(server: RunningServer, source: str = "127.0.0.1") -> smtplib.SMTP:
    smtp = smtplib.SMTP(server.host, server.port, timeout=30, source_address=(source, 0))
    smtp.ehlo("client.test")
    smtp.mail("s@remote.test")
    return smtp


def _raw(server: RunningServer, source: str = "127.0.0.1") -> tuple[socket.socket, object]:
    sock = socket.create_connection((server.host, server.port), timeout=10, source_address=(source, 0))
    return sock, sock.makefile("rb")


def test_each_further_error_waits_longer(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": 0.3, "growth": 2})
    with _session(server) as smtp:
        waits = [_timed(lambda i=i: smtp.rcpt(f"nobody{i}@example.test"))[1] for i in range(3)]
    assert waits[0] >= 0.3 and waits[1] >= 0.6 and waits[2] >= 1.2
    assert waits[2] < 1.2 + 1.0


def test_hard_error_limit_closes_with_421(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"hard_error_limit": 3})
    with _session(server) as smtp:
        assert smtp.rcpt("a@example.test")[0] == 550
        assert smtp.rcpt("b@example.test")[0] == 550
        code, text = smtp.rcpt("c@example.test")
        assert (code, text[:5]) == (421, b"4.7.0")
    server.wait_for_log(r"session end .*outcome=too-many-errors")


def test_a_known_bad_client_waits_the_escalated_delay_on_a_new_connection(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": 0.2, "growth": 2}, reputation={"half_life": "1h"})
    with _session(server, "127.0.1.2") as smtp:
        for i in range(3):
            smtp.rcpt(f"probe{i}@example.test")
    with _session(server, "127.0.1.2") as smtp:
        code, took = _timed(lambda: smtp.rcpt("again@example.test"))
    assert code == 550 and took >= 0.2 * 2**3 * 0.9  # three remembered errors: 2^3 times the delay
    with _session(server, "127.0.9.9") as smtp:  # another /24 starts clean
        code, took = _timed(lambda: smtp.rcpt("fresh@example.test"))
    assert code == 550 and took < 0.2 + FAST


def test_flagged_harvester_gets_the_same_answer_for_valid_and_unknown(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(harvest={"threshold": 3, "delay": 0.4})
    with _session(server, "127.0.1.2") as smtp:
        assert [smtp.rcpt(f"guess{i}@example.test")[0] for i in range(2)] == [550, 550]
        third = _timed(lambda: smtp.rcpt("guess2@example.test"))  # reaches the threshold: flagged now
        valid = _timed(lambda: smtp.rcpt("alice@example.test"))
        unknown = _timed(lambda: smtp.rcpt("guess3@example.test"))
    assert third[0] == valid[0] == unknown[0] == 450
    assert abs(valid[1] - unknown[1]) < 0.3 and valid[1] >= 0.4
    with _session(server, "127.0.1.2") as smtp:  # and on a new connection too
        assert smtp.rcpt("alice@example.test")[0] == 450
    with _session(server, "127.0.2.3") as smtp:  # a client elsewhere is untouched
        assert _timed(lambda: smtp.rcpt("alice@example.test"))[0] == 250


def test_a_harvesting_prefix_is_seen_as_one(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(harvest={"threshold": 3, "delay": 0})
    codes = []
    for source in ("127.0.1.2", "127.0.1.3", "127.0.1.4"):  # two each: no single host reaches 3
        with _session(server, source) as smtp:
            codes += [smtp.rcpt(f"{source}-{i}@example.test")[0] for i in range(2)]
    # The prefix needs threshold / prefix_weight = 6: the 6th unknown flags the whole /24 at once.
    assert codes == [550] * 5 + [450]
    with _session(server, "127.0.1.5") as smtp:
        assert smtp.rcpt("alice@example.test")[0] == 450


def test_accept_then_defer_answers_250_to_all_and_451_at_data(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(harvest={"threshold": 2, "delay": 0, "action": "accept-then-defer"})
    with _session(server) as smtp:
        smtp.rcpt("x1@example.test")
        smtp.rcpt("x2@example.test")
        assert smtp.rcpt("x3@example.test")[0] == 250
        assert smtp.rcpt("alice@example.test")[0] == 250
        code, text = smtp.docmd("DATA")
        assert (code, text[:5]) == (451, b"4.7.1")
    assert server.messages() == []


def test_connections_per_client_limit(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"connections_per_client": 2})
    held = [_raw(server), _raw(server)]
    for _, reader in held:
        assert reader.readline().startswith(b"220 ")  # type: ignore[attr-defined]
    sock, reader = _raw(server)
    assert reader.readline().startswith(b"421 4.7.0")  # type: ignore[attr-defined]
    sock.close()
    other, other_reader = _raw(server, "127.0.0.2")
    assert other_reader.readline().startswith(b"220 ")  # type: ignore[attr-defined]
    for s, _ in [*held, (other, None)]:
        s.close()


def test_when_the_tar_pit_is_full_the_reply_comes_at_once_then_421(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": 10}, limits={"max_tarpitted": 1})
    first, first_reader = _raw(server)
    first_reader.readline()  # type: ignore[attr-defined]
    first.sendall(b"HELO a\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<x@example.test>\r\n")
    first_reader.readline(), first_reader.readline()  # type: ignore[attr-defined]
    time.sleep(0.3)  # the first session now holds the only place in the tar pit
    with _session(server, "127.0.0.2") as smtp:
        code, took = _timed(lambda: smtp.rcpt("y@example.test"))
        assert code == 550 and took < FAST
        assert smtp.getreply()[0] == 421
    first.close()
    server.wait_for_log("tar pit full")


def test_greet_pause_and_early_talker(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(greet={"pause": 1}, tarpit={"delay": 0.3})
    sock, reader = _raw(server)
    started = time.monotonic()
    assert reader.readline().startswith(b"220 ") and time.monotonic() - started >= 0.9  # type: ignore[attr-defined]
    sock.sendall(b"EHLO patient.test\r\n")
    assert reader.readline().startswith(b"250")  # type: ignore[attr-defined]
    sock.close()
    talker, talker_reader = _raw(server)
    talker.sendall(b"EHLO eager.test\r\n")  # before the greeting
    assert talker_reader.readline().startswith(b"220 ")  # type: ignore[attr-defined]
    assert talker_reader.readline().startswith(b"554 5.5.1")  # type: ignore[attr-defined]
    talker.close()


def test_teaser_banner_sends_its_first_line_at_once(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(greet={"pause": 1, "teaser": True})
    sock, reader = _raw(server)
    started = time.monotonic()
    assert reader.readline().startswith(b"220-") and time.monotonic() - started < FAST  # type: ignore[attr-defined]
    assert reader.readline().startswith(b"220 ") and time.monotonic() - started >= 0.9  # type: ignore[attr-defined]
    sock.close()


def test_stutter_spreads_the_reply_over_the_delay(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": 2, "stutter": True, "stutter_interval": "250ms"})
    sock, reader = _raw(server)
    reader.readline()  # type: ignore[attr-defined]
    sock.sendall(b"HELO a\r\nMAIL FROM:<s@r.test>\r\n")
    reader.readline(), reader.readline()  # type: ignore[attr-defined]
    sock.sendall(b"RCPT TO:<x@example.test>\r\n")
    started, pieces, data = time.monotonic(), [], b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        assert chunk
        pieces.append(time.monotonic() - started)
        data += chunk
    assert data.startswith(b"550 5.1.1")
    assert len(pieces) >= 4 and pieces[0] < 1.0 and pieces[-1] >= 1.9
    sock.close()


def test_watch_mode_logs_and_applies_nothing(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": 2, "mode": "watch"})
    with _session(server) as smtp:
        code, took = _timed(lambda: smtp.rcpt("nobody@example.test"))
    assert code == 550 and took < FAST
    server.wait_for_log(r"watch: would delay 2\.0s for 127\.0\.0\.1: 550")
