"""Server specs and checker settings: what is accepted, what is refused, and with what error."""

from __future__ import annotations

import pytest

from smtp_tarpit.dnscheck import DnsChecker, ServerAddress, parse_server


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("127.0.0.1", ServerAddress("127.0.0.1", 53)),
        (" 127.0.0.1:5353 ", ServerAddress("127.0.0.1", 5353)),
        ("::1", ServerAddress("::1", 53)),
        ("[::1]", ServerAddress("::1", 53)),
        ("[::1]:5353", ServerAddress("::1", 5353)),
        ("[0:0::1]:53", ServerAddress("::1", 53)),
    ],
)
def test_server_spec_is_parsed(spec: str, expected: ServerAddress) -> None:
    assert parse_server(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["", "localhost", "dns.example:53", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:x", "[::1", "[::1]x"],
)
def test_bad_server_spec_is_refused_by_name(spec: str) -> None:
    with pytest.raises(ValueError, match="DNS server"):
        parse_server(spec)


def test_checker_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="DNS server"):
        DnsChecker(servers=["localhost"])
    with pytest.raises(ValueError, match="timeout"):
        DnsChecker(servers=["127.0.0.1"], timeout=0)
    with pytest.raises(ValueError, match="cache size"):
        DnsChecker(servers=["127.0.0.1"], cache_size=-1)


def test_checker_without_servers_uses_the_system_configuration() -> None:
    checker = DnsChecker()  # reads /etc/resolv.conf (or fails open without it); sends nothing
    assert (checker.lookups, checker.cache_hits, checker.failures) == (0, 0, 0)
