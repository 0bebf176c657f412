"""Graceful shutdown (SIGTERM) and a hard crash (SIGKILL): nothing acknowledged is ever lost."""

from __future__ import annotations

import re
import signal
import socket
import time

from tests.e2e.helpers import RunningServer, kill_while_sending


def _reply(reader: socket.SocketIO | object) -> bytes:
    lines = []
    while True:
        line = reader.readline()  # type: ignore[attr-defined]
        lines.append(line)
        if not line or line[3:4] != b"-":
            return b"".join(lines)


def test_sigterm_sends_421_to_idle_and_tarpitted_sessions(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": 30})
    idle = socket.create_connection((server.host, server.port), timeout=10)
    idle_reader = idle.makefile("rb")
    assert _reply(idle_reader).startswith(b"220")
    held = socket.create_connection((server.host, server.port), timeout=10)
    held_reader = held.makefile("rb")
    _reply(held_reader)
    held.sendall(b"EHLO c.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<nobody@example.test>\r\n")
    _reply(held_reader), _reply(held_reader)
    time.sleep(0.2)  # the RCPT's 550 is now held for 30 s
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert _reply(idle_reader).startswith(b"421 4.3.2")
    assert _reply(held_reader).startswith(b"421 4.3.2")
    assert time.monotonic() - started < 5
    assert server.process.wait(timeout=10) == 0
    idle.close()
    held.close()


def test_sigterm_lets_a_message_in_flight_finish(server: RunningServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        _reply(reader)
        sock.sendall(b"EHLO c.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        replies = [_reply(reader) for _ in range(4)]
        assert replies[-1].startswith(b"354")
        sock.sendall(b"Subject: in flight\r\n\r\nfirst half\r\n")
        time.sleep(0.2)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # within the 5 s grace of the test config
        sock.sendall(b"second half\r\n.\r\n")
        assert _reply(reader).startswith(b"250 2.0.0")
        assert _reply(reader).startswith(b"421 4.3.2")
    assert server.process.wait(timeout=10) == 0
    [stored] = server.messages()
    assert stored.endswith(b"first half\nsecond half\n")


def test_kill_9_loses_no_acknowledged_message(server: RunningServer) -> None:
    acknowledged = kill_while_sending(server, minimum=40, within=10)  # SIGKILL while clients still send
    assert len(acknowledged) >= 40
    stored = {}
    for message in server.messages():
        found = re.search(rb"id (\w+)", message)
        assert found is not None
        assert re.search(rb"END-w\d+n\d+\n$", message), "a message in new/ is incomplete"
        stored[found.group(1).decode()] = message
    for message_id, marker in acknowledged.items():
        assert message_id in stored, f"message {message_id} got a 250 but is not in the Maildir"
        assert stored[message_id].endswith(b"END-" + marker + b"\n")
