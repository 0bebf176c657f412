"""DNS-based exemptions and listings end to end, against a DNS server of our own on loopback."""

from __future__ import annotations

import asyncio
import re
import smtplib
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.dnscheck.dnsserver import AuthoritativeServer, Mode, load_zones

ZONES = {
    "1.0.127.in-addr.arpa.": """
@      3600 IN SOA ns.google.test. hostmaster.google.test. 1 3600 600 86400 300
@      3600 IN NS  ns.google.test.
2       300 IN PTR mx.google.test.
3       300 IN PTR spoof.google.test.
""",
    "google.test.": """
@      3600 IN SOA ns.google.test. hostmaster.google.test. 1 3600 600 86400 300
@      3600 IN NS  ns
mx      300 IN A   127.0.1.2
spoof   300 IN A   192.0.2.1
""",
    "bl.test.": """
@      3600 IN SOA ns.bl.test. hostmaster.bl.test. 1 3600 600 86400 300
@      3600 IN NS  ns.bl.test.
4.1.0.127 300 IN A 127.0.0.2
""",
}


class ThreadedDns:
    """The tests' authoritative DNS server, in a thread of its own so the smtp-tarpit process can ask it."""

    def __init__(self, mode: Mode) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = AuthoritativeServer(load_zones(ZONES), mode)
        ready = threading.Event()
        self.port = 0

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            transport, _ = self.loop.run_until_complete(
                self.loop.create_datagram_endpoint(lambda: self.server, local_addr=("127.0.0.1", 0))
            )
            self.port = transport.get_extra_info("sockname")[1]
            ready.set()
            self.loop.run_forever()
            transport.close()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def dns_server() -> Iterator[ThreadedDns]:
    server = ThreadedDns("answer")
    yield server
    server.stop()


def _first_error_wait(server, source: str) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        started = time.monotonic()
        code, _ = smtp.rcpt("nobody@example.test")
        return code, time.monotonic() - started


def test_forward_confirmed_hostname_suffix_is_exempt(make_server, dns_server: ThreadedDns) -> None:  # type: ignore[no-untyped-def]
    server = make_server(
        tarpit={"delay": 1, "exempt_hostnames": [".google.test"]},
        dns={"servers": [f"127.0.0.1:{dns_server.port}"], "timeout": "500ms"},
        admin={"listen": "127.0.0.1:0"},
    )
    code, took = _first_error_wait(server, "127.0.1.2")
    assert code == 550 and took < 0.5
    code, took = _first_error_wait(server, "127.0.1.3")  # its PTR name does not point back at it
    assert code == 550 and took >= 1
    server.wait_for_log(r"session end client=127\.0\.1\.2 host=mx\.google\.test ")
    admin = server.wait_for_log(r"admin HTTP on (\S+) port (\d+)")
    with urllib.request.urlopen(f"http://{admin.group(1)}:{admin.group(2)}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    asked = re.search(
        r'^smtp_tarpit_lookups_total\{kind="dns",outcome="asked"\} (\S+)$', metrics, re.MULTILINE
    )
    assert asked is not None and float(asked.group(1)) >= 4  # two PTR and two forward lookups


def test_dnsbl_listing_adds_to_the_score(make_server, dns_server: ThreadedDns) -> None:  # type: ignore[no-untyped-def]
    server = make_server(
        tarpit={"delay": 0.3, "growth": 2},
        reputation={"dnsbl": ["bl.test"], "dnsbl_score": 2},
        dns={"servers": [f"127.0.0.1:{dns_server.port}"]},
    )
    code, took = _first_error_wait(server, "127.0.1.4")  # listed: 0.3 x 2^2
    assert code == 550 and took >= 1.2 * 0.9
    code, took = _first_error_wait(server, "127.0.1.5")  # not listed
    assert code == 550 and took < 0.3 + 0.5


def test_a_dead_dns_server_never_blocks_mail(make_server) -> None:  # type: ignore[no-untyped-def]
    silent = ThreadedDns("silent")
    try:
        server = make_server(
            tarpit={"delay": 0, "exempt_hostnames": [".google.test"]},
            dns={"servers": [f"127.0.0.1:{silent.port}"], "timeout": "300ms"},
        )
        started = time.monotonic()
        with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
            assert time.monotonic() - started < 1.5
            assert smtp.sendmail("s@remote.test", ["alice@example.test"], b"Subject: x\r\n\r\ny\r\n") == {}
    finally:
        silent.stop()
