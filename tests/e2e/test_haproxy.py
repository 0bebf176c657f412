"""Behind a real HAProxy: two smtp-tarpit processes, PROXY v1 to one and v2 to the other, one shared store.

A harvester and a legitimate sender reach the servers only through the balancer, from different loopback
addresses; each is judged by its own address (the one HAProxy saw), not the balancer's.
"""

from __future__ import annotations

import json
import shutil
import smtplib
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.downstream import free_port
from tests.e2e.helpers import RunningServer, start_server
from tests.polling import wait_until

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")

HARVESTER, SENDER, PROBE = "127.0.1.2", "127.0.2.3", "127.0.3.4"
STATE_DB = "state.db"


@pytest.fixture
def balanced(tmp_path: Path) -> Iterator[tuple[int, list[RunningServer]]]:
    store = f"sqlite://{tmp_path / STATE_DB}"  # one file, two processes: the shared view of one host
    servers: list[RunningServer] = []
    process = None
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            servers.append(
                start_server(
                    tmp_path / name,
                    {
                        "server": {"proxy_protocol_from": ["127.0.0.1/32"]},
                        "harvest": {"threshold": 3, "delay": 0},
                        "reputation": {"store": store},
                    },
                )
            )
        port = free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            "global\n  maxconn 200\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
            f"frontend smtp\n  bind 127.0.0.1:{port}\n  default_backend tarpits\n"
            "backend tarpits\n  balance roundrobin\n"
            f"  server a 127.0.0.1:{servers[0].port} send-proxy\n"
            f"  server b 127.0.0.1:{servers[1].port} send-proxy-v2\n"
        )
        with (tmp_path / "haproxy.log").open("wb") as log:
            process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log, stderr=log)
        _wait_for_port(port, process)
        yield port, servers
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
        for server in servers:
            server.stop()


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert process.poll() is None, "haproxy exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1, source_address=(PROBE, 0)) as sock:
                sock.settimeout(5)
                if sock.recv(64).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("haproxy never forwarded a greeting")


def _rcpts(port: int, source: str, recipients: list[str]) -> list[int]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        return [smtp.rcpt(recipient)[0] for recipient in recipients]


def _stored_unknowns(database: Path, client: str) -> int:
    with sqlite3.connect(database) as db:
        row = db.execute("SELECT state FROM client_state WHERE key = ?", (f"ip:{client}",)).fetchone()
    return 0 if row is None else len(json.loads(row[0])["u"])


def _wait_stored(database: Path, client: str, unknowns: int) -> None:
    # A server writes what it saw beside the session, not before its reply, so the next connection can
    # arrive before the write commits (CI saw exactly that). Waiting here keeps the test about the store
    # adding up, not about who wins that race.
    stored = wait_until(lambda: _stored_unknowns(database, client) >= unknowns, timeout=10)
    assert stored, f"the store never held {unknowns} unknowns for {client}"


def test_each_client_is_judged_by_its_own_address(
    balanced: tuple[int, list[RunningServer]], tmp_path: Path
) -> None:
    port, servers = balanced
    # One unknown recipient per connection: round robin spreads them over both servers, and only the
    # shared store adds them up to the threshold.
    codes: list[int] = []
    for i in range(3):
        codes.append(_rcpts(port, HARVESTER, [f"guess{i}@example.test"])[0])
        _wait_stored(tmp_path / STATE_DB, HARVESTER, i + 1)
    assert codes == [550, 550, 450]
    for _ in range(2):  # flagged on whichever server it reaches next, valid address or not
        assert _rcpts(port, HARVESTER, ["alice@example.test"]) == [450]

    for _ in range(2):  # the legitimate sender, through the same balancer, on both servers
        with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(SENDER, 0)) as smtp:
            assert (
                smtp.sendmail("s@remote.test", ["alice@example.test"], b"Subject: hi\r\n\r\nhello\r\n") == {}
            )
    delivered = [message for server in servers for message in server.messages()]
    assert len(delivered) == 2
    assert all(f"[{SENDER}]".encode() in message.split(b"\r\n\r\n")[0] for message in delivered)

    for server in servers:
        log = server.log()
        assert f"client={HARVESTER} " in log and f"client={SENDER} " in log
        assert "client=127.0.0.1 " not in log  # nobody was judged as the balancer
    assert any(f"harvest flag client={HARVESTER}" in server.log() for server in servers)
