"""Several smtp-tarpit processes on one port (``[server] reuse_port``): the kernel spreads the connections
over them, they share one Maildir and one client store, and every acknowledged message is there once."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.downstream import free_port
from tests.e2e.helpers import RunningServer, start_server, write_config

MESSAGES = 40


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[int, list[RunningServer]]]:
    port = free_port()
    servers: list[RunningServer] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            servers.append(
                start_server(
                    tmp_path / name,  # each its own admin socket (admin.sock in its folder)
                    {
                        "server": {"listen": [f"127.0.0.1:{port}"], "reuse_port": True},
                        "delivery": {"maildir": str(tmp_path / "mail")},
                        "reputation": {"store": f"sqlite://{tmp_path / 'state.db'}"},
                    },
                )
            )
        yield port, servers
    finally:
        for server in servers:
            server.stop()


def test_two_processes_share_one_port_and_one_maildir(pair: tuple[int, list[RunningServer]]) -> None:
    port, servers = pair
    for number in range(MESSAGES):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo("client.example")
            smtp.mail("s@remote.test")
            smtp.rcpt("alice@example.test")
            code, _ = smtp.data(f"Subject: {number}\r\n\r\nmessage {number}\r\n".encode())
            assert code == 250
    for server in servers:
        assert server.stop() == 0
    # Each process took some: the kernel hashes each connection's source port (40 all on one: 2^-39).
    served = [server.log().count("result=delivered") for server in servers]
    assert sum(served) == MESSAGES and min(served) > 0, served
    mailbox = servers[0].folder.parent / "mail" / "example.test" / "alice"
    bodies = sorted(path.read_bytes() for path in (mailbox / "new").iterdir())
    assert len(bodies) == MESSAGES
    assert sorted(f"message {n}\n".encode() for n in range(MESSAGES)) == sorted(
        body.rpartition(b"\n\n")[2] for body in bodies
    )
    assert list((mailbox / "tmp").iterdir()) == []


def test_reuse_port_with_the_memory_store_says_each_process_judges_alone(tmp_path: Path) -> None:
    server = start_server(tmp_path, {"server": {"reuse_port": True}})
    try:
        server.wait_for_log(r"WARNING .*reuse_port with the memory store: each process on the port judges")
    finally:
        assert server.stop() == 0


def test_a_port_taken_without_reuse_port_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "a").mkdir()
    first = start_server(tmp_path / "a", {"server": {"listen": [f"127.0.0.1:{port}"]}})
    try:
        (tmp_path / "b").mkdir()
        config = write_config(
            tmp_path / "b", {"server": {"listen": [f"127.0.0.1:{port}"]}, "delivery": {"maildir": "mail"}}
        )
        second = subprocess.run(
            [sys.executable, "-m", "smtp_tarpit", "serve", "--config", str(config)],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        assert first.stop() == 0
    assert second.returncode == 2
    assert f"[server] listen: cannot listen on 127.0.0.1:{port}: Address already in use" in second.stderr
    assert "reuse_port" in second.stderr
    assert "Traceback" not in second.stderr
