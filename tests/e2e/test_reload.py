"""SIGHUP reloads the whole configuration without dropping sessions; a broken one is refused."""

from __future__ import annotations

import signal
import smtplib
import ssl
import time

from cryptography import x509

from tests.e2e.helpers import RunningServer, make_certificate


def _rewrite(server: RunningServer, old: str, new: str) -> None:
    text = server.config.read_text()
    assert old in text
    server.config.write_text(text.replace(old, new))


def _hup(server: RunningServer, expect: str, count: int = 1) -> None:
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while server.log().count(expect) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.log().count(expect) >= count, server.log()


def test_a_session_in_flight_survives_a_reload_and_follows_the_new_policy(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": 0})
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        assert smtp.rcpt("alice@example.test")[0] == 250
        _rewrite(server, "delay = 0", "delay = 1")
        _hup(server, "tar pit delay 1s")
        started = time.monotonic()
        assert smtp.rcpt("nobody@example.test")[0] == 550
        assert time.monotonic() - started >= 1  # the new delay applies to the next reply
        assert smtp.data(b"Subject: survived\r\n\r\nx\r\n")[0] == 250
    assert len(server.messages()) == 1


def test_a_broken_config_is_refused_and_the_running_one_stays(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tarpit={"delay": 0})
    _rewrite(server, "delay = 0", "delay = 0\ndealy = 5")
    _hup(server, "reload refused, keeping the running configuration")
    assert "[tarpit] dealy: unknown key" in server.log()
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        started = time.monotonic()
        assert smtp.rcpt("nobody@example.test")[0] == 550
        assert time.monotonic() - started < 0.5


def _peer_serial(server: RunningServer) -> int:
    context = ssl.create_default_context(cafile=str(server.folder / "cert.pem"))
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.starttls(context=context)
        der = smtp.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    return x509.load_der_x509_certificate(der).serial_number


def test_a_renewed_certificate_is_used_after_sighup(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tls={"certificate": "cert.pem", "private_key": "key.pem"})
    first = _peer_serial(server)
    make_certificate(server.folder)  # renewal writes new files in place
    _hup(server, "TLS on")
    assert _peer_serial(server) != first
