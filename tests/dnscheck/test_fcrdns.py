"""Forward-confirmed reverse DNS against a real (tiny) DNS server on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest

from smtp_tarpit.dnscheck import MAX_PTR_NAMES, DnsChecker
from tests.dnscheck.dnsserver import serving
from tests.dnscheck.helpers import ip, run

PTR_10 = "10.2.0.192.in-addr.arpa."
V6_PTR = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."


async def verify(address: str) -> str | None:
    async with serving() as (_server, spec):
        checker = DnsChecker(servers=[spec])
        return await checker.verified_hostname(ip(address))


def test_ptr_name_whose_a_record_holds_the_address_is_verified() -> None:
    assert run(verify("192.0.2.10")) == "mx1.example.test"


def test_verified_name_is_lower_cased_and_skips_ptr_names_that_do_not_resolve() -> None:
    # 192.0.2.12 has PTRs bogus.example.test (NXDOMAIN) and Good.Example.Test (A 192.0.2.12).
    assert run(verify("192.0.2.12")) == "good.example.test"


def test_ptr_name_whose_forward_records_hold_another_address_is_not_verified() -> None:
    assert run(verify("192.0.2.11")) is None


def test_address_without_ptr_record_has_no_verified_name() -> None:
    assert run(verify("192.0.2.200")) is None


def test_ipv6_address_is_verified_by_nibble_ptr_and_aaaa() -> None:
    async def scenario() -> tuple[str | None, int, int]:
        async with serving() as (server, spec):
            name = await DnsChecker(servers=[spec]).verified_hostname(ip("2001:db8::25"))
            return name, server.count(V6_PTR, "PTR"), server.count("mx6.example.test.", "AAAA")

    assert run(scenario()) == ("mx6.example.test", 1, 1)


def test_ipv4_mapped_ipv6_address_is_checked_as_ipv4() -> None:
    assert run(verify("::ffff:192.0.2.10")) == "mx1.example.test"


def test_only_the_first_few_ptr_names_are_checked() -> None:
    # 192.0.2.14 has six PTR names; only the sixth resolves back, and it is past the limit.
    async def scenario() -> tuple[str | None, int]:
        async with serving() as (server, spec):
            name = await DnsChecker(servers=[spec]).verified_hostname(ip("192.0.2.14"))
            return name, sum(1 for _name, rdtype in server.questions if rdtype == "A")

    assert MAX_PTR_NAMES == 5
    assert run(scenario()) == (None, MAX_PTR_NAMES)


def test_refused_answer_is_a_failure_and_not_verified() -> None:
    # The server is authoritative for 192.0.2.0/24 only; it refuses other reverse names.
    async def scenario() -> tuple[str | None, int]:
        async with serving() as (_server, spec):
            checker = DnsChecker(servers=[spec])
            return await checker.verified_hostname(ip("198.51.100.7")), checker.failures

    assert run(scenario()) == (None, 1)


def test_server_on_ipv6_loopback_with_port_is_used() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")

    async def scenario() -> str | None:
        async with serving(host="::1") as (_server, spec):
            assert spec.startswith("[::1]:")
            return await DnsChecker(servers=[spec]).verified_hostname(ip("192.0.2.10"))

    assert run(scenario()) == "mx1.example.test"


def test_silent_server_costs_one_timeout_then_fails_fast() -> None:
    timeout = 0.3

    async def scenario() -> tuple[list[str | None], list[float], int, int]:
        loop = asyncio.get_running_loop()
        async with serving(mode="silent") as (server, spec):
            checker = DnsChecker(servers=[spec], timeout=timeout)
            results, times = [], []
            for _ in range(2):
                start = loop.time()
                results.append(await checker.verified_hostname(ip("192.0.2.10")))
                times.append(loop.time() - start)
            return results, times, server.count(PTR_10, "PTR"), checker.failures

    results, times, ptr_queries, failures = run(scenario())
    assert results == [None, None]
    assert timeout * 0.9 <= times[0] < timeout + 0.25
    assert times[1] < 0.05  # the failure is remembered: the next client does not wait again
    assert (ptr_queries, failures) == (1, 1)


def test_servfail_is_a_failure_and_not_verified() -> None:
    async def scenario() -> tuple[str | None, int]:
        async with serving(mode="servfail") as (_server, spec):
            checker = DnsChecker(servers=[spec])
            return await checker.verified_hostname(ip("192.0.2.10")), checker.failures

    assert run(scenario()) == (None, 1)
