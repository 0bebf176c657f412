"""Log lines as operators and their tools read them: text and JSON, one line per session and message."""

from __future__ import annotations

import json
import smtplib

from tests.e2e.helpers import RunningServer


def _one_message(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.sendmail("s@remote.test", ["alice@example.test"], b"Subject: log\r\n\r\nx\r\n")
    server.wait_for_log("session end")


def test_text_log_has_a_line_per_message_and_per_session(server: RunningServer) -> None:
    _one_message(server)
    log = server.log()
    assert (
        "message id=" in log
        and "from=<s@remote.test> to=<alice@example.test>" in log
        and "result=delivered" in log
    )
    assert "session end client=127.0.0.1 host=- helo=" in log and "outcome=quit" in log


def test_json_log_is_one_object_per_line_with_the_fields(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(log={"format": "json", "level": "info"})
    _one_message(server)
    entries = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    session = next(e for e in entries if e["message"].startswith("session end"))
    assert session["client"] == "127.0.0.1" and session["outcome"] == "quit" and session["level"] == "info"
    message = next(e for e in entries if e["message"].startswith("message id="))
    assert message["result"] == "delivered" and message["from"] == "<s@remote.test>"
