"""What DNS says about a client before we greet it: exempt by name or DNSWL, or listed on DNSBLs.

Invariants: never raises and never blocks mail: every lookup is bounded by ``[dns] timeout`` and a failed
lookup reads as "not exempt, not listed"; the checks of one client run concurrently.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from smtp_tarpit.config import Config
from smtp_tarpit.dnscheck import DnsChecker, matches_suffix
from smtp_tarpit.policy.decisions import IPAddress


@dataclass(frozen=True, slots=True)
class Verdict:
    exempt: bool = False
    hostname: str = ""
    listed: float = 0.0  # extra score for the session: dnsbl_score per listing zone


async def classify(dns: DnsChecker, config: Config, client: IPAddress) -> Verdict:
    tarpit, reputation = config.tarpit, config.reputation
    zones = [*tarpit.exempt_dnswl, *reputation.dnsbl]
    name_lookup = dns.verified_hostname(client) if tarpit.exempt_hostnames else _no_name()
    hostname, listings = await asyncio.gather(name_lookup, _listings(dns, client, zones))
    allowed, blocked = listings[: len(tarpit.exempt_dnswl)], listings[len(tarpit.exempt_dnswl) :]
    exempt = matches_suffix(hostname, tarpit.exempt_hostnames) or any(allowed)
    return Verdict(exempt, hostname or "", reputation.dnsbl_score * sum(blocked))


async def _listings(dns: DnsChecker, client: IPAddress, zones: list[str]) -> list[bool]:
    return list(await asyncio.gather(*(dns.listed(client, zone) for zone in zones)))


async def _no_name() -> str | None:
    return None
