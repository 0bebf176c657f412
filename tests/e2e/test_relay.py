"""Relay mode end to end, with another smtp-tarpit as the downstream MTA (Postfix tests live elsewhere)."""

from __future__ import annotations

import signal
import smtplib
import socket
import time
import urllib.error
import urllib.request

from tests.e2e.helpers import PASSWORD, RunningServer


def _pair(make_server, **upstream: dict[str, object]) -> tuple[RunningServer, RunningServer]:  # type: ignore[no-untyped-def]
    downstream = make_server(server={"hostname": "down.example.test"})
    relay = {"relay": f"smtp://127.0.0.1:{downstream.port}", "relay_timeout": "5s"}
    front = make_server(delivery=relay, **upstream)
    return front, downstream


def test_a_relayed_message_arrives_once_and_intact(make_server) -> None:  # type: ignore[no-untyped-def]
    front, downstream = _pair(make_server)
    body = b"Subject: relayed\r\n\r\nfirst\r\n.leading dot\r\n..two dots\r\n"
    with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
        assert smtp.sendmail("s@remote.test", ["alice@example.test"], body) == {}
    [stored] = downstream.messages("alice@example.test")
    assert stored.endswith(b"Subject: relayed\n\nfirst\n.leading dot\n..two dots\n")
    assert stored.count(b"Return-Path:") == 1  # the final delivery adds it, not the relay
    assert b"by mx.example.test (smtp-tarpit) with ESMTP" in stored  # our Received header went along


def test_smuggling_never_makes_a_second_message_downstream(make_server) -> None:  # type: ignore[no-untyped-def]
    front, downstream = _pair(make_server)
    smuggled = (
        b"Subject: smuggle\r\n\r\nx\n.\nMAIL FROM:<evil@evil.test>\nRCPT TO:<bob@example.test>\nDATA\n"
        b"Subject: smuggled\n\nowned\n.\n\r.\rQUIT\r\n"
    )
    with socket.create_connection((front.host, front.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"HELO a\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        codes = [reader.readline()[:3] for _ in range(4)]
        assert codes[-1] == b"354"
        sock.sendall(smuggled + b".\r\nQUIT\r\n")
        assert reader.readline().startswith(b"250 ")
        reader.close()
    time.sleep(0.3)
    assert len(downstream.messages("alice@example.test")) == 1
    assert downstream.messages("bob@example.test") == []


def test_downstream_refusal_is_passed_on_as_5xx_and_tar_pitted(make_server) -> None:  # type: ignore[no-untyped-def]
    front, downstream = _pair(make_server, tarpit={"delay": 1})
    (downstream.folder / "recipients.txt").write_text("bob@example.test\n")  # alice is gone downstream
    downstream.process.send_signal(signal.SIGHUP)
    downstream.wait_for_log("reloaded")
    with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        assert smtp.rcpt("alice@example.test")[0] == 250  # our own file still knows her
        started = time.monotonic()
        code, text = smtp.data(b"Subject: refused\r\n\r\nx\r\n")
    assert code == 550 and text.startswith(b"5.1.1 ") and time.monotonic() - started >= 1
    assert b"down.example.test" not in text  # the downstream's own text is never shown


def test_downstream_gone_is_a_4xx_and_new_sessions_get_421(make_server) -> None:  # type: ignore[no-untyped-def]
    front, downstream = _pair(make_server)
    with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        smtp.rcpt("alice@example.test")
        assert downstream.stop() == 0  # the downstream goes away mid-session
        code, text = smtp.data(b"Subject: lost?\r\n\r\nx\r\n")
        assert (code, text[:5]) == (451, b"4.4.1")
    with socket.create_connection((front.host, front.port), timeout=10) as sock:
        assert sock.makefile("rb").readline().startswith(b"421 4.4.1")
    front.wait_for_log(r'result=deferred detail="downstream smtp://127\.0\.0\.1:\d+ unavailable')


def test_authenticated_clients_may_pass_other_domains_to_the_downstream_which_decides(make_server) -> None:  # type: ignore[no-untyped-def]
    front, _ = _pair(make_server, auth={"users_file": "users.txt", "plaintext_from_loopback": True})
    with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        assert smtp.rcpt("someone@elsewhere.test")[0] == 554  # anonymous: relay denied here
    with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.login("alice", PASSWORD)
        smtp.mail("alice@example.test")
        assert smtp.rcpt("someone@elsewhere.test")[0] == 250  # passed on ...
        code, text = smtp.data(b"Subject: out\r\n\r\nx\r\n")
    assert (code, text[:5]) == (554, b"5.7.1")  # ... and the downstream (no relay for us) said no


def test_relay_over_starttls_checks_the_downstream_certificate(make_server) -> None:  # type: ignore[no-untyped-def]
    downstream = make_server(tls={"certificate": "cert.pem", "private_key": "key.pem"})
    trusted = {
        "relay": f"smtp+starttls://localhost:{downstream.port}",
        "relay_ca_file": str(downstream.folder / "cert.pem"),
    }
    front = make_server(delivery=trusted)
    with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
        assert smtp.sendmail("s@remote.test", ["alice@example.test"], b"Subject: tls\r\n\r\nx\r\n") == {}
    [stored] = downstream.messages("alice@example.test")
    assert b"with ESMTPS" in stored  # the hop to the downstream was encrypted
    untrusting = make_server(delivery={"relay": f"smtp+starttls://localhost:{downstream.port}"})
    with smtplib.SMTP(untrusting.host, untrusting.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        smtp.rcpt("alice@example.test")
        code, _ = smtp.data(b"Subject: tls\r\n\r\nx\r\n")
    assert code == 451  # a self-signed certificate nobody vouches for: not delivered, not lost


def test_healthz_says_when_the_downstream_is_down(make_server) -> None:  # type: ignore[no-untyped-def]
    downstream = make_server()
    front = make_server(
        delivery={"relay": f"smtp://127.0.0.1:{downstream.port}"}, admin={"listen": "127.0.0.1:0"}
    )
    admin = front.wait_for_log(r"admin HTTP on (\S+) port (\d+)")
    url = f"http://{admin.group(1)}:{admin.group(2)}/healthz"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
    downstream.stop()
    with smtplib.SMTP(front.host, front.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        smtp.rcpt("alice@example.test")
        assert smtp.data(b"Subject: x\r\n\r\ny\r\n")[0] == 451
    try:
        urllib.request.urlopen(url, timeout=10)
        raise AssertionError("healthz said ok with the downstream down")
    except urllib.error.HTTPError as exc:
        assert exc.code == 503 and b"downstream" in exc.read()
