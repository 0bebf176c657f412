"""DNSBL/DNSWL lookups against the test server's bl.test zone."""

from __future__ import annotations

import asyncio

import pytest

from smtp_tarpit.dnscheck import DnsChecker
from tests.dnscheck.dnsserver import Mode, serving
from tests.dnscheck.helpers import ip, run

V6_LISTING = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test."


async def listed(address: str, zone: str = "bl.test", mode: Mode = "answer") -> tuple[bool, DnsChecker]:
    async with serving(mode) as (_server, spec):
        checker = DnsChecker(servers=[spec], timeout=0.3)
        return await checker.listed(ip(address), zone), checker


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("192.0.2.10", True),  # A 127.0.0.2
        ("192.0.2.50", False),  # NXDOMAIN
        ("192.0.2.20", False),  # A 127.255.255.254: an error code about the querier, not a listing
        ("192.0.2.30", False),  # A 192.0.2.1: outside 127/8
        ("192.0.2.40", False),  # TXT but no A record
        ("::ffff:192.0.2.10", True),  # IPv4-mapped: queried as IPv4
    ],
)
def test_listing_follows_the_a_record(address: str, expected: bool) -> None:
    assert run(listed(address))[0] is expected


def test_error_code_answer_is_counted() -> None:
    result, checker = run(listed("192.0.2.20"))
    assert (result, checker.zone_errors, checker.failures) == (False, 1, 0)


def test_zone_name_case_and_dots_do_not_matter() -> None:
    assert run(listed("192.0.2.10", zone=".BL.test."))[0] is True


def test_ipv6_address_is_queried_by_nibbles() -> None:
    async def scenario() -> tuple[bool, int]:
        async with serving() as (server, spec):
            result = await DnsChecker(servers=[spec]).listed(ip("2001:db8::25"), "bl.test")
            return result, server.count(V6_LISTING, "A")

    assert run(scenario()) == (True, 1)


def test_empty_zone_is_not_listed_and_does_not_raise() -> None:
    assert run(listed("192.0.2.10", zone=" . "))[0] is False


@pytest.mark.parametrize("mode", ["silent", "servfail"])
def test_dead_or_failing_server_means_not_listed_within_the_timeout(mode: Mode) -> None:
    async def scenario() -> tuple[bool, float, int]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        result, checker = await listed("192.0.2.10", mode=mode)
        return result, loop.time() - start, checker.failures

    result, elapsed, failures = run(scenario())
    assert (result, failures) == (False, 1)
    assert elapsed < 0.3 + 0.25
