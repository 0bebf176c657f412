"""The admin HTTP listener on a real server: /metrics moves as sessions happen, /healthz, /status, /forget."""

from __future__ import annotations

import json
import re
import smtplib
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from tests.e2e.helpers import RunningServer

TOKEN = "s3cret-token"


def _admin(make_server, **overrides: dict[str, object]) -> tuple[RunningServer, str]:  # type: ignore[no-untyped-def]
    server = make_server(admin={"listen": "127.0.0.1:0", "token": TOKEN}, **overrides)
    found = server.wait_for_log(r"admin HTTP on (\S+) port (\d+)")
    return server, f"http://{found.group(1)}:{found.group(2)}"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _post(url: str, fields: dict[str, str]) -> tuple[int, dict[str, object]]:
    data = urllib.parse.urlencode(fields).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_metrics_move_with_a_real_session(make_server) -> None:  # type: ignore[no-untyped-def]
    server, base = _admin(make_server, tarpit={"delay": 0.3})
    _, before = _get(f"{base}/metrics")
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        assert smtp.rcpt("nobody@example.test")[0] == 550
        assert smtp.rcpt("alice@example.test")[0] == 250
        assert smtp.data(b"Subject: m\r\n\r\nx\r\n")[0] == 250
    server.wait_for_log("session end")
    status, after = _get(f"{base}/metrics")
    assert status == 200
    assert _metric(after, "smtp_tarpit_sessions_total") == _metric(before, "smtp_tarpit_sessions_total") + 1
    assert _metric(after, "smtp_tarpit_replies_total", '{class="5xx",command="rcpt"}') == 1
    assert _metric(after, "smtp_tarpit_replies_total", '{class="2xx",command="message"}') == 1
    assert _metric(after, "smtp_tarpit_decisions_total", '{kind="delay"}') == 1
    assert _metric(after, "smtp_tarpit_delayed_seconds_total") >= 0.3
    assert _metric(after, "smtp_tarpit_messages_total", '{result="accepted"}') == 1
    assert _metric(after, "smtp_tarpit_delivery_seconds_count") == 1
    assert "127.0.0.1" not in after  # no per-client label, ever


def test_hang_up_while_held_is_measured(make_server) -> None:  # type: ignore[no-untyped-def]
    server, base = _admin(make_server, tarpit={"delay": 30})
    sock = socket.create_connection((server.host, server.port), timeout=10)
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(b"HELO a\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<x@example.test>\r\n")
    reader.readline(), reader.readline()
    time.sleep(1.2)
    _, held = _get(f"{base}/metrics")
    assert _metric(held, "smtp_tarpit_sessions_tarpitted") == 1
    reader.close()
    sock.close()  # an impatient bot
    server.wait_for_log("session end")
    _, text = _get(f"{base}/metrics")
    assert _metric(text, "smtp_tarpit_hangup_wait_seconds_count") == 1
    assert _metric(text, "smtp_tarpit_hangup_wait_seconds_bucket", '{le="1.0"}') == 0
    assert _metric(text, "smtp_tarpit_hangup_wait_seconds_bucket", '{le="2.0"}') == 1
    assert _metric(text, "smtp_tarpit_sessions_tarpitted") == 0
    assert _metric(text, "smtp_tarpit_delayed_seconds_total") >= 1.2  # the time it did wait counts


def test_healthz_status_and_forget(make_server) -> None:  # type: ignore[no-untyped-def]
    server, base = _admin(make_server, harvest={"threshold": 2, "delay": 0}, reputation={"half_life": "1h"})
    assert _get(f"{base}/healthz") == (200, '{"status": "ok"}')
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=("127.0.1.2", 0)) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        smtp.rcpt("a@example.test")
        smtp.rcpt("b@example.test")
    _, body = _get(f"{base}/status")
    status = json.loads(body)
    assert status["harvest_flags_total"] >= 1
    top = {client["key"]: client for client in status["top_clients"]}
    assert top["ip:127.0.1.2"]["flagged_for"] > 3000 and top["ip:127.0.1.2"]["why"] == {
        "unknown-recipient": 2
    }
    assert _post(f"{base}/forget", {"client": "127.0.1.2"})[0] == 403
    assert _post(f"{base}/forget", {"client": "127.0.1.2", "token": "wrong"})[0] == 403
    code, answer = _post(f"{base}/forget", {"client": "127.0.1.2", "token": TOKEN})
    assert code == 200 and answer["forgotten"] == ["ip:127.0.1.2", "net:127.0.1.0/24"]
    _, body = _get(f"{base}/status")
    assert json.loads(body)["top_clients"] == []
    code, page = _get(f"{base}/")
    assert code == 200 and "<h1>smtp-tarpit</h1>" in page


def test_healthz_reports_an_unusable_maildir(make_server) -> None:  # type: ignore[no-untyped-def]
    server, base = _admin(make_server)
    assert not server.maildir.exists()  # made on first delivery
    server.maildir.write_text("a file where the Maildir root should be")
    code, body = _get(f"{base}/healthz")
    assert code == 503 and "delivery" in body
