"""DnsChecker: forward-confirmed reverse DNS and DNSBL/DNSWL lookups, cached, shared, bounded in time.

Owns: the answer cache, the table of lookups in flight, and the counters. One question is a (name, type)
pair; the checks build on it:
- ``verified_hostname``: PTR of the address, then A (IPv4) or AAAA (IPv6) of at most MAX_PTR_NAMES of the
  PTR names, concurrently; the first PTR name (in answer order) whose records hold the address wins.
- ``listed``: A of the address's DNSBL/DNSWL name (see ``names`` for what counts as listed).

Invariants:
- Fail open: the public checks never raise (only cancellation propagates); NXDOMAIN, a timeout or any
  error reads as "no verified name" / "not listed".
- Bounded time: each public call returns within ``timeout`` + CALL_GRACE seconds, however many questions
  it asks; each question is bounded by ``timeout`` on its own.
- Cache: answers live for their record TTL capped at ``max_ttl``; negative answers for ``negative_ttl``;
  failures for FAILURE_TTL (at most ``negative_ttl``), so a dead server costs one timeout per question per
  FAILURE_TTL, not one per client. At most ``cache_size`` questions are kept (least recently used go first).
- No thundering herd: while a question is in flight, every other asker awaits the same task (shielded, so
  one asker's cancellation never cancels it for the others, and its answer still fills the cache).
- Counters (plain ints, for metrics): ``lookups`` counts questions asked of the checker, ``cache_hits`` those
  answered without a query of their own (from the cache or by joining one in flight), ``failures`` the
  queries that failed, ``zone_errors`` DNSBL answers that were error codes about us (127.255.255.x).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import time
from collections.abc import Callable

import dns.asyncresolver
import dns.name
import dns.rdatatype

from smtp_tarpit.dnscheck import names
from smtp_tarpit.dnscheck.cache import TtlLruCache
from smtp_tarpit.dnscheck.query import Outcome, Status, ask
from smtp_tarpit.dnscheck.servers import make_resolver, parse_server

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Question = tuple[dns.name.Name, dns.rdatatype.RdataType]
Records = tuple[str, ...]

MAX_PTR_NAMES = 5
"""PTR names checked per address; more are ignored (a client could publish hundreds)."""
FAILURE_TTL = 30.0
"""Seconds a failed question (timeout, SERVFAIL, error) is remembered before it is asked again."""
CALL_GRACE = 0.05
"""Seconds a public call may run past ``timeout``, so that a question timing out on its own finishes first."""


class DnsChecker:
    """Asynchronous, cached DNS checks for allowlists and blocklists. Use from one event loop at a time."""

    lookups: int
    cache_hits: int
    failures: int
    zone_errors: int

    def __init__(
        self,
        *,
        servers: list[str] | None = None,
        timeout: float = 1.0,
        cache_size: int = 10000,
        negative_ttl: float = 300.0,
        max_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"DNS timeout must be > 0 seconds, got {timeout}")
        if negative_ttl < 0 or max_ttl < 0:
            raise ValueError("DNS negative_ttl and max_ttl must be >= 0 seconds")
        parsed = None if servers is None else [parse_server(spec) for spec in servers]
        self._resolver: dns.asyncresolver.Resolver = make_resolver(parsed, timeout)
        self._timeout = timeout
        self._negative_ttl = negative_ttl
        self._max_ttl = max_ttl
        self._clock = clock
        self._cache: TtlLruCache[Question, Records] = TtlLruCache(cache_size)
        self._in_flight: dict[Question, asyncio.Task[Records]] = {}
        self.lookups = 0
        self.cache_hits = 0
        self.failures = 0
        self.zone_errors = 0

    async def verified_hostname(self, address: IPAddress) -> str | None:
        """The forward-confirmed reverse DNS name of ``address`` (lower-case, no trailing dot), or None."""
        try:
            async with asyncio.timeout(self._timeout + CALL_GRACE):
                return await self._verify(names.canonical_address(address))
        except Exception:  # fail open: a DNS problem never blocks mail
            return None

    async def listed(self, address: IPAddress, zone: str) -> bool:
        """Whether ``zone`` (a DNSBL or DNSWL) lists ``address``; False on any doubt."""
        try:
            async with asyncio.timeout(self._timeout + CALL_GRACE):
                qname = names.listing_name(names.canonical_address(address), zone)
                records = await self._records(qname, dns.rdatatype.A)
        except Exception:  # fail open: a DNS problem never blocks mail
            return False
        if any(names.is_error_code(record) for record in records):
            self.zone_errors += 1
        return any(names.is_listing(record) for record in records)

    async def _verify(self, address: IPAddress) -> str | None:
        ptr_names = await self._records(names.reverse_name(address), dns.rdatatype.PTR)
        candidates = list(dict.fromkeys(ptr_names))[:MAX_PTR_NAMES]
        rdtype = dns.rdatatype.A if address.version == 4 else dns.rdatatype.AAAA
        forwards = await asyncio.gather(
            *(self._records(dns.name.from_text(name), rdtype) for name in candidates)
        )
        for name, records in zip(candidates, forwards, strict=True):
            if names.contains_address(records, address):
                return name
        return None

    async def _records(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Records:
        """The records for one question: from the cache, from a lookup in flight, or from a new lookup."""
        question = (qname, rdtype)
        self.lookups += 1
        cached = self._cache.get(question, self._clock())
        if cached is not None:
            self.cache_hits += 1
            return cached
        task = self._in_flight.get(question)
        if task is None or task.done():
            task = asyncio.create_task(self._fetch(question))
            self._in_flight[question] = task
            task.add_done_callback(functools.partial(self._forget, question))
        else:
            self.cache_hits += 1
        return await asyncio.shield(task)

    async def _fetch(self, question: Question) -> Records:
        outcome = await ask(self._resolver, *question, timeout=self._timeout)
        if outcome.status is Status.FAILURE:
            self.failures += 1
        lifetime = self._lifetime(outcome)
        if lifetime > 0:
            self._cache.put(question, outcome.records, self._clock() + lifetime)
        return outcome.records

    def _lifetime(self, outcome: Outcome) -> float:
        """Seconds an outcome may be reused."""
        if outcome.status is Status.ANSWER:
            return min(outcome.ttl, self._max_ttl)
        if outcome.status is Status.NEGATIVE:
            return self._negative_ttl
        return min(FAILURE_TTL, self._negative_ttl)

    def _forget(self, question: Question, task: asyncio.Task[Records]) -> None:
        if self._in_flight.get(question) is task:
            del self._in_flight[question]
