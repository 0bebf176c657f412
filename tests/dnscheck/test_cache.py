"""The checker's cache and in-flight sharing, seen from the DNS server: which questions reach it, and when."""

from __future__ import annotations

import asyncio

from smtp_tarpit.dnscheck import FAILURE_TTL, DnsChecker
from smtp_tarpit.dnscheck.cache import TtlLruCache
from tests.dnscheck.dnsserver import Mode, serving
from tests.dnscheck.helpers import FakeClock, ip, run

PTR_10 = "10.2.0.192.in-addr.arpa."
PTR_13 = "13.2.0.192.in-addr.arpa."
PTR_200 = "200.2.0.192.in-addr.arpa."


async def asked_after(
    address: str,
    steps: list[float],
    mode: Mode = "answer",
    max_ttl: float = 3600.0,
    negative_ttl: float = 300.0,
) -> tuple[list[int], DnsChecker]:
    """Look ``address`` up once, then again after each clock step; the server's question count each time."""
    clock = FakeClock()
    async with serving(mode) as (server, spec):
        checker = DnsChecker(servers=[spec], clock=clock, max_ttl=max_ttl, negative_ttl=negative_ttl)
        await checker.verified_hostname(ip(address))
        counts = [len(server.questions)]
        for step in steps:
            clock.advance(step)
            await checker.verified_hostname(ip(address))
            counts.append(len(server.questions))
    return counts, checker


def test_second_lookup_is_answered_from_the_cache() -> None:
    async def scenario() -> tuple[list[str | None], int, int, DnsChecker]:
        async with serving() as (server, spec):
            checker = DnsChecker(servers=[spec])
            names = [await checker.verified_hostname(ip("192.0.2.10")) for _ in range(2)]
            return names, server.count(PTR_10, "PTR"), server.count("mx1.example.test.", "A"), checker

    names, ptr_queries, a_queries, checker = run(scenario())
    assert names == ["mx1.example.test"] * 2
    assert (ptr_queries, a_queries) == (1, 1)
    assert (checker.lookups, checker.cache_hits, checker.failures) == (4, 2, 0)


def test_answers_expire_with_their_ttl() -> None:
    # PTR and A of 192.0.2.13 have TTL 60.
    counts, _ = run(asked_after("192.0.2.13", [59.0, 2.0]))
    assert counts == [2, 2, 4]


def test_ttl_is_capped_by_max_ttl() -> None:
    # PTR and A of 192.0.2.10 have TTL 300.
    counts, _ = run(asked_after("192.0.2.10", [99.0, 2.0], max_ttl=100.0))
    assert counts == [2, 2, 4]


def test_nxdomain_is_cached_for_negative_ttl() -> None:
    counts, _ = run(asked_after("192.0.2.200", [49.0, 2.0], negative_ttl=50.0))
    assert counts == [1, 1, 2]


def test_failure_is_cached_only_briefly() -> None:
    counts, checker = run(asked_after("192.0.2.10", [FAILURE_TTL - 1, 2.0], mode="servfail"))
    assert counts == [1, 1, 2]
    assert checker.failures == 2


def test_full_cache_forgets_least_recently_used_question() -> None:
    async def scenario() -> int:
        async with serving() as (server, spec):
            checker = DnsChecker(servers=[spec], cache_size=2)
            for address in ("192.0.2.10", "192.0.2.200", "192.0.2.10"):
                await checker.verified_hostname(ip(address))
            return server.count(PTR_10, "PTR")

    # 10: PTR + A cached; 200: its PTR evicts 10's PTR; 10 again asks its PTR again.
    assert run(scenario()) == 2


def test_concurrent_identical_lookups_share_one_query() -> None:
    async def scenario() -> tuple[list[str | None], int, int, DnsChecker]:
        async with serving(delay=0.05) as (server, spec):
            checker = DnsChecker(servers=[spec])
            names = await asyncio.gather(*(checker.verified_hostname(ip("192.0.2.10")) for _ in range(10)))
            return names, server.count(PTR_10, "PTR"), server.count("mx1.example.test.", "A"), checker

    names, ptr_queries, a_queries, checker = run(scenario())
    assert names == ["mx1.example.test"] * 10
    assert (ptr_queries, a_queries) == (1, 1)
    assert (checker.lookups, checker.cache_hits) == (20, 18)


def test_cancelled_caller_does_not_cancel_the_shared_lookup() -> None:
    async def scenario() -> tuple[str | None, int]:
        async with serving(delay=0.05) as (server, spec):
            checker = DnsChecker(servers=[spec])
            first = asyncio.create_task(checker.verified_hostname(ip("192.0.2.10")))
            second = asyncio.create_task(checker.verified_hostname(ip("192.0.2.10")))
            await asyncio.sleep(0.01)
            first.cancel()
            name = await second
            return name, server.count(PTR_10, "PTR")

    assert run(scenario()) == ("mx1.example.test", 1)


def test_cache_returns_value_until_expiry_only() -> None:
    cache: TtlLruCache[str, int] = TtlLruCache(10)
    cache.put("a", 1, expires_at=10.0)
    assert cache.get("a", now=9.9) == 1
    assert cache.get("a", now=10.0) is None
    assert len(cache) == 0


def test_cache_evicts_least_recently_read_entry() -> None:
    cache: TtlLruCache[str, int] = TtlLruCache(2)
    cache.put("a", 1, expires_at=100.0)
    cache.put("b", 2, expires_at=100.0)
    assert cache.get("a", now=0.0) == 1
    cache.put("c", 3, expires_at=100.0)
    assert [cache.get(key, now=0.0) for key in "abc"] == [1, None, 3]


def test_cache_of_size_zero_stores_nothing() -> None:
    cache: TtlLruCache[str, int] = TtlLruCache(0)
    cache.put("a", 1, expires_at=100.0)
    assert cache.get("a", now=0.0) is None
