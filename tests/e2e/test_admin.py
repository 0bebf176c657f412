"""Operator control: `smtp-tarpit client show|forget` against a running server's admin socket."""

from __future__ import annotations

import json
import os
import smtplib
import stat
import subprocess
import sys

from tests.e2e.helpers import RunningServer


def _cli(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtp_tarpit", "client", *args, "--config", str(server.config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _harvest(server: RunningServer, source: str, count: int) -> list[int]:
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        return [smtp.rcpt(f"probe{i}@example.test")[0] for i in range(count)]


def test_show_explains_a_flagged_client_and_forget_undoes_it(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(harvest={"threshold": 3, "delay": 0}, reputation={"half_life": "1h"})
    assert _harvest(server, "127.0.1.2", 4) == [550, 550, 450, 450]
    shown = _cli(server, "show", "127.0.1.2", "--json")
    assert shown.returncode == 0, shown.stderr
    answer = json.loads(shown.stdout)
    assert answer["flagged"] is True
    assert answer["records"]["ip:127.0.1.2"]["seen"] == {"unknown-recipient": 4}
    assert answer["records"]["ip:127.0.1.2"]["flagged_for"] > 3000
    text = _cli(server, "show", "127.0.1.2")
    assert "FLAGGED as a harvester" in text.stdout and "unknown-recipient 4" in text.stdout

    forgotten = _cli(server, "forget", "127.0.1.2")
    assert forgotten.returncode == 0
    assert "ip:127.0.1.2" in forgotten.stdout and "net:127.0.1.0/24" in forgotten.stdout
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=("127.0.1.2", 0)) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        assert smtp.rcpt("alice@example.test")[0] == 250  # forgiven: mail flows again
    server.wait_for_log(r"admin: forgot 127\.0\.1\.2")


def test_admin_socket_is_private(server: RunningServer) -> None:
    mode = os.stat(server.folder / "admin.sock").st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_unreachable_server_and_bad_address_are_clear_errors(server: RunningServer) -> None:
    bad = _cli(server, "show", "not-an-ip")
    assert bad.returncode == 2 and "not an IP address" in bad.stderr
    server.stop()
    gone = _cli(server, "show", "127.0.0.1")
    assert gone.returncode == 1 and "cannot reach the server" in gone.stderr


def test_a_second_server_on_the_same_socket_is_refused(server: RunningServer) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "smtp_tarpit", "serve", "--config", str(server.config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 2 and "in use by another running server" in second.stderr
